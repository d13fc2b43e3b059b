"""Reading every GPU's used and total memory, cheaply, from a background thread.

NVML (the ``nvidia-ml-py`` package) is preferred: it reads the driver's figures for the whole device
(other processes included) in a few microseconds and never creates a CUDA context. Without it, torch's
``mem_get_info`` gives the same figures but needs a CUDA context on each device. Without a GPU, the
reader reports none.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

import torch

log = logging.getLogger("qwenfit")


@dataclass(frozen=True)
class GpuReading:
    """One GPU at one moment (indices are torch's, ``cuda:<index>``)."""

    index: int
    name: str
    used_bytes: int
    total_bytes: int


class GpuReader(Protocol):
    source: str  # "nvml", "torch" or "none": where the figures come from

    def read(self) -> tuple[GpuReading, ...]: ...

    def close(self) -> None: ...


class NoGpuReader:
    source = "none"

    def read(self) -> tuple[GpuReading, ...]:
        return ()

    def close(self) -> None:
        pass


class TorchReader:
    """``torch.cuda.mem_get_info`` per device (creates a CUDA context on each device it reads)."""

    source = "torch"

    def __init__(self) -> None:
        self.names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]

    def read(self) -> tuple[GpuReading, ...]:
        readings = []
        for index, name in enumerate(self.names):
            free, total = torch.cuda.mem_get_info(index)
            readings.append(GpuReading(index, name, total - free, total))
        return tuple(readings)

    def close(self) -> None:
        pass


def _torch_uuids() -> list[str] | None:
    """The UUIDs of the devices torch sees, in torch's order (None when torch cannot say)."""
    if not torch.cuda.is_available():
        return None
    try:
        return [str(torch.cuda.get_device_properties(i).uuid) for i in range(torch.cuda.device_count())]
    except (AttributeError, RuntimeError):
        return None


class NvmlReader:
    """NVML through ``pynvml`` (package ``nvidia-ml-py``): the devices torch sees, in torch's order
    when their UUIDs can be matched (CUDA_VISIBLE_DEVICES and device order differ from NVML's)."""

    source = "nvml"

    def __init__(self, nvml: Any) -> None:
        self.nvml = nvml
        nvml.nvmlInit()
        try:
            handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
            if not handles:
                raise RuntimeError("NVML sees no GPU")
            self.handles = self._in_torch_order(handles)
            self.names = [self._text(nvml.nvmlDeviceGetName(h)) for h in self.handles]
        except Exception:
            nvml.nvmlShutdown()
            raise

    @staticmethod
    def _text(value: str | bytes) -> str:
        return value.decode() if isinstance(value, bytes) else value

    def _in_torch_order(self, handles: list[Any]) -> list[Any]:
        wanted = _torch_uuids()
        if not wanted:
            return handles
        by_uuid = {self._text(self.nvml.nvmlDeviceGetUUID(h)).removeprefix("GPU-"): h for h in handles}
        ordered = [by_uuid.get(u.removeprefix("GPU-")) for u in wanted]
        return handles if None in ordered else ordered

    def read(self) -> tuple[GpuReading, ...]:
        readings = []
        for index, (handle, name) in enumerate(zip(self.handles, self.names, strict=True)):
            info = self.nvml.nvmlDeviceGetMemoryInfo(handle)
            readings.append(GpuReading(index, name, int(info.used), int(info.total)))
        return tuple(readings)

    def close(self) -> None:
        self.nvml.nvmlShutdown()


def open_gpu_reader() -> GpuReader:
    """The best reader this machine allows: NVML, else torch, else none."""
    try:
        import pynvml

        return NvmlReader(pynvml)
    except Exception as error:  # not installed, no driver, no GPU: fall back quietly
        log.debug("QwenFit memory monitor: NVML unavailable (%s)", error)
    if torch.cuda.is_available():
        return TorchReader()
    return NoGpuReader()
