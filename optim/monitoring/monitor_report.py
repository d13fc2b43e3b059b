"""The VRAM monitor's text: memory now, and what the last run used against what its plan predicted."""

from __future__ import annotations

from .memory_sampler import MemorySample
from .run_record import RunRecord

GIB = 1024**3
SOURCES = {"nvml": "NVML", "torch": "torch", "none": ""}


def describe_memory(sample: MemorySample, source: str) -> str:
    """One line per GPU (or "no GPU"), then host RAM, this process and the pack's pinned memory."""
    via = f" ({SOURCES.get(source, source)})" if SOURCES.get(source, source) else ""
    lines = [
        f"GPU {g.index} {g.name}: {g.used_bytes / GIB:.2f} / {g.total_bytes / GIB:.2f} GiB used{via}"
        for g in sample.gpus
    ] or ["no GPU: running on the CPU"]
    lines.append(
        f"host RAM: {sample.host_used_bytes / GIB:.1f} / {sample.host_total_bytes / GIB:.1f} GiB used, "
        f"this process {sample.rss_bytes / GIB:.2f} GiB, pinned by QwenFit {sample.pinned_bytes / GIB:.2f} GiB"
    )
    return "\n".join(lines)


def describe_prediction(record: RunRecord) -> str:
    """Measured peak per phase next to the plan's prediction (empty without either)."""
    if not record.predicted_phase_peaks:
        return ""
    measured = {p.name: p.peak_reserved for p in record.phases}
    parts = []
    for name, predicted in record.predicted_phase_peaks:
        got = measured.get(name, 0)
        parts.append(
            f"{name} {got / GIB:.2f} of {predicted / GIB:.2f}" if got else f"{name} plan {predicted / GIB:.2f}"
        )
    line = "measured vs planned peak (GiB): " + ", ".join(parts)
    if record.peak_reserved:
        error = (record.predicted_peak - record.peak_reserved) / record.peak_reserved * 100
        line += (
            f"; whole run {record.peak_reserved / GIB:.2f} against {record.predicted_peak / GIB:.2f} ({error:+.1f}%)"
        )
    else:
        line += " (no GPU: nothing measured in VRAM)"
    return line


def monitor_report(sample: MemorySample, source: str, record: RunRecord | None) -> str:
    """The whole report: memory now, then the last run (phases, s/step, prediction, the plan that ran)."""
    parts = [describe_memory(sample, source)]
    if record is None:
        parts.append("no QwenFit run yet in this session")
        return "\n".join(parts)
    parts.append(record.describe())
    if record.job is not None:
        parts.append(f"job: {record.job.describe()}")
    prediction = describe_prediction(record)
    if prediction:
        parts.append(prediction)
    parts.append("plan that ran:\n" + record.plan)
    return "\n".join(parts)
