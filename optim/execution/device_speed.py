"""The speed of this device, measured once: matmul FLOP/s in the compute dtype and pinned host-to-device
bytes/s, with small buffers (under 300 MiB of VRAM, 32 MiB of pinned memory), never while a run holds the GPU."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

import torch

from ..planning.speed_ladder import FP8_CAPABILITY, INT8_CAPABILITY
from ..planning.step_time import DeviceSpeed
from ..quant.low_precision import quantize_rows_fp8, quantize_rows_int8

# Each rate is the best of a few trials: a busy machine only ever slows a trial down.
TRIALS = 3


def best_seconds(run: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Seconds per call of ``run``, the best of TRIALS timings of ``repeats`` calls after one warm-up
    (kernel selection), synchronised on ``device``."""
    cuda = device.type == "cuda"
    run()
    best = math.inf
    for _ in range(TRIALS):
        if cuda:
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        for _ in range(repeats):
            run()
        if cuda:
            torch.cuda.synchronize(device)
        best = min(best, (time.perf_counter() - start) / repeats)
    return best


def _time_matmul(device: torch.device, dtype: torch.dtype, n: int, repeats: int) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n**3 / best_seconds(lambda: torch.matmul(a, b), device, repeats)


def _time_fast_matmul(device: torch.device, kind: str, n: int) -> float:
    """FLOP/s of the 8-bit product itself, inputs already quantized (in the compiled blocks the activations'
    quantization fuses into the elementwise kernels before it). fp8 is timed with promoted accumulation:
    FAST_EFFICIENCY (optim/planning/step_time.py) was fitted to rates measured so."""
    x = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    w = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    if kind == "fp8":
        (xq, xs), (wq, ws) = quantize_rows_fp8(x), quantize_rows_fp8(w)
        ws = ws.reshape(1, -1)
        run = lambda: torch._scaled_mm(xq, wq.t(), scale_a=xs, scale_b=ws, out_dtype=torch.bfloat16)  # noqa: E731
    else:
        xq, wq = quantize_rows_int8(x)[0], quantize_rows_int8(w)[0]
        run = lambda: torch._int_mm(xq, wq.t())  # noqa: E731
    return 2 * n**3 / best_seconds(run, device, 10)


def _fast_rates(device: torch.device) -> tuple[tuple[str, float], ...]:
    capability = torch.cuda.get_device_capability(device)
    kinds = [k for k, need in (("fp8", FP8_CAPABILITY), ("int8", INT8_CAPABILITY)) if capability >= need]
    return tuple((kind, _time_fast_matmul(device, kind, 4096)) for kind in kinds)


def _time_copy(device: torch.device, nbytes: int, repeats: int) -> float:
    host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    target = torch.empty(nbytes, dtype=torch.uint8, device=device)
    return nbytes / best_seconds(lambda: target.copy_(host, non_blocking=True), device, repeats)


_speeds: dict[tuple[str, torch.dtype], DeviceSpeed] = {}
_speed_lock = threading.Lock()


def known_device_speed(device: torch.device, dtype: torch.dtype) -> DeviceSpeed | None:
    """The speed measured earlier for ``device`` and ``dtype``, if any (measures nothing)."""
    with _speed_lock:
        return _speeds.get((str(device), dtype))


def device_speed(device: torch.device, dtype: torch.dtype) -> DeviceSpeed:
    """Measure (once per device and dtype, then remembered) the matmul and copy rates of ``device``."""
    key = (str(device), dtype)
    with _speed_lock:
        if key not in _speeds:
            with torch.inference_mode():
                if device.type == "cuda":
                    name = f"{device} ({torch.cuda.get_device_name(device)})"
                    flops = _time_matmul(device, dtype, 4096, 10)  # large enough to fill a big GPU
                    copy = _time_copy(device, 32 * 2**20, 8)
                    fast = _fast_rates(device)
                else:
                    name, flops, copy, fast = "the CPU", _time_matmul(device, dtype, 384, 8), None, ()
            _speeds[key] = DeviceSpeed(name, flops, copy, fast)
        return _speeds[key]
