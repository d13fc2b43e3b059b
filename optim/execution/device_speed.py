"""The speed of this device, measured once: matmul FLOP/s in the compute dtype and pinned host-to-device
bytes/s, with small buffers (24 MiB of VRAM, 32 MiB of pinned memory), never while a run holds the GPU."""

from __future__ import annotations

import threading
import time

import torch

from ..planning.step_time import DeviceSpeed

# Each rate is the best of a few trials: a busy machine only ever slows a trial down.
TRIALS = 3


def _time_matmul(device: torch.device, dtype: torch.dtype, n: int, repeats: int) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    torch.matmul(a, b)  # warm-up (kernel selection)
    best = 0.0
    for _ in range(TRIALS):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        for _ in range(repeats):
            torch.matmul(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = max(best, 2 * n**3 * repeats / (time.perf_counter() - start))
    return best


def _time_copy(device: torch.device, nbytes: int, repeats: int) -> float:
    host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    target = torch.empty(nbytes, dtype=torch.uint8, device=device)
    target.copy_(host, non_blocking=True)
    best = 0.0
    for _ in range(TRIALS):
        torch.cuda.synchronize(device)
        start = time.perf_counter()
        for _ in range(repeats):
            target.copy_(host, non_blocking=True)
        torch.cuda.synchronize(device)
        best = max(best, nbytes * repeats / (time.perf_counter() - start))
    return best


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
                    flops = _time_matmul(device, dtype, 2048, 20)
                    copy = _time_copy(device, 32 * 2**20, 8)
                else:
                    name, flops, copy = "the CPU", _time_matmul(device, dtype, 384, 8), None
            _speeds[key] = DeviceSpeed(name, flops, copy)
        return _speeds[key]
