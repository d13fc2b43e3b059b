"""Memory readings: per-GPU use and host RAM, for reports and the monitor."""

from __future__ import annotations

from dataclasses import dataclass

import psutil
import torch

GIB = 1024**3


@dataclass(frozen=True)
class GpuMemory:
    index: int
    name: str
    used_bytes: int
    total_bytes: int
    allocated_bytes: int  # by this process's torch allocator
    peak_allocated_bytes: int


@dataclass(frozen=True)
class MemorySnapshot:
    gpus: tuple[GpuMemory, ...]
    rss_bytes: int
    host_used_bytes: int
    host_total_bytes: int

    def describe(self) -> str:
        """One line per GPU plus one for host RAM."""
        lines = [
            f"GPU {g.index} {g.name}: {g.used_bytes / GIB:.2f} / {g.total_bytes / GIB:.2f} GiB used, "
            f"torch allocated {g.allocated_bytes / GIB:.2f} GiB (peak {g.peak_allocated_bytes / GIB:.2f})"
            for g in self.gpus
        ] or ["no GPU: running on the CPU"]
        lines.append(
            f"host RAM: {self.host_used_bytes / GIB:.1f} / {self.host_total_bytes / GIB:.1f} GiB used, "
            f"this process {self.rss_bytes / GIB:.2f} GiB"
        )
        return "\n".join(lines)


def memory_snapshot() -> MemorySnapshot:
    """Read GPU and host memory now. Works without a GPU."""
    gpus = []
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(index)
            gpus.append(
                GpuMemory(
                    index=index,
                    name=torch.cuda.get_device_name(index),
                    used_bytes=total - free,
                    total_bytes=total,
                    allocated_bytes=torch.cuda.memory_allocated(index),
                    peak_allocated_bytes=torch.cuda.max_memory_allocated(index),
                )
            )
    host = psutil.virtual_memory()
    return MemorySnapshot(
        gpus=tuple(gpus),
        rss_bytes=psutil.Process().memory_info().rss,
        host_used_bytes=host.total - host.available,
        host_total_bytes=host.total,
    )
