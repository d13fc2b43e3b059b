"""The memory sampler thread: starts, samples a few times a second, marks a run's phases, stops and
leaves no thread behind; NVML readings in torch's device order; the report and the chart it feeds."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest
import torch

from optim.monitoring.gpu_memory_readers import GpuReading, NoGpuReader, NvmlReader, open_gpu_reader
from optim.monitoring.memory_chart import draw_run_chart
from optim.monitoring.memory_sampler import THREAD_NAME, MemorySample, MemorySampler, last_run_window
from optim.monitoring.monitor_report import monitor_report
from optim.monitoring.run_record import PhaseStat, PhaseTracker, RunRecord, add_run_observer, remove_run_observer
from optim.qwen.job_shape import JobShape

GIB = 1024**3


def sampler_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == THREAD_NAME]


DEADLINE_S = 60  # generous: only a sampler that never samples reaches it


def _heard(sampler: MemorySampler, count: int) -> threading.Event:
    """Set once ``sampler``'s thread has taken ``count`` more samples (a listener counts them)."""
    heard, done = [], threading.Event()

    def listener(sample: MemorySample) -> None:
        heard.append(sample)
        if len(heard) >= count:
            done.set()

    sampler.add_listener(listener)
    return done


def test_starts_samples_and_stops_without_a_thread_left():
    sampler = MemorySampler(interval_s=0.02)
    assert not sampler.running and sampler_threads() == []
    five = _heard(sampler, 5)
    assert sampler.start() is sampler and sampler.start() is sampler  # a second start is a no-op
    assert sampler.running and len(sampler_threads()) == 1
    assert five.wait(DEADLINE_S)
    sampler.stop()
    assert not sampler.running and sampler_threads() == []
    samples = sampler.samples()
    assert len(samples) >= 5
    times = [s.t for s in samples]
    assert times == sorted(times)
    # Never faster than asked (a slow machine only spaces them more).
    assert all(b - a >= 0.02 * 0.9 for a, b in zip(times, times[1:], strict=False)), times
    latest = samples[-1]
    assert latest.gpus == () and 0 < latest.rss_bytes < latest.host_total_bytes
    assert 0 < latest.host_used_bytes <= latest.host_total_bytes and latest.pinned_bytes == 0
    # Stopped means stopped: the thread is joined, so nothing can add a sample; a restart works.
    assert len(sampler.samples()) == len(samples)
    again = _heard(sampler, len(samples) + 1)
    with sampler:
        assert again.wait(DEADLINE_S)
        assert len(sampler_threads()) == 1
    assert sampler_threads() == [] and len(sampler.samples()) > len(samples)


def test_history_is_bounded_and_filtered_by_time():
    sampler = MemorySampler(interval_s=0.01, history_s=0.05, reader=NoGpuReader())
    for _ in range(20):
        sampler.sample_now()
    assert len(sampler.samples()) == 5
    middle = sampler.samples()[2].t
    assert [s.t for s in sampler.samples(since=middle)] == [s.t for s in sampler.samples()[2:]]


def test_a_run_marks_its_phases_in_the_history():
    sampler = MemorySampler(interval_s=0.5, reader=NoGpuReader())
    add_run_observer(sampler)
    try:
        tracker = PhaseTracker(torch.device("cpu"), 2, "tiny.safetensors", "plan", JobShape("edit", 512, 512))
        tracker.denoising_starts()
        tracker.step_done(1, 2)
        tracker.step_done(2, 2)
        record = tracker.finish()
        tracker.abandon()  # after finish: nothing more
        stopped = PhaseTracker(torch.device("cpu"), 2, "tiny.safetensors", "plan")
        stopped.abandon()  # Cancel during encoding: the run still ends in the history
    finally:
        remove_run_observer(sampler)
    labels = [m.label for m in sampler.marks()]
    assert labels == ["encode", "denoise", "decode", "end", "encode", "end"]
    assert len(sampler.samples()) == len(labels)  # every mark takes a sample
    start, end = last_run_window(sampler.marks())
    assert sampler.marks()[4].t == start and end == sampler.marks()[5].t
    assert record.job.width == 512 and record.device == "cpu"


def test_a_failing_reader_or_listener_does_not_end_the_thread():
    class Flaky(NoGpuReader):
        calls = 0

        def read(self):
            self.calls += 1
            if self.calls % 2:
                raise RuntimeError("driver hiccup")
            return ()

    heard = []

    def listener(sample: MemorySample) -> None:
        heard.append(sample)
        raise ValueError("a broken listener")

    sampler = MemorySampler(interval_s=0.01, reader=Flaky())
    sampler.add_listener(listener)
    three = _heard(sampler, 3)
    with sampler:
        assert three.wait(DEADLINE_S)  # samples go on after the reader's and the listener's errors
        assert sampler.running
    assert sampler_threads() == [] and len(heard) >= 3 and len(sampler.samples()) == len(heard)


def test_sampling_costs_well_under_a_millisecond():
    sampler = MemorySampler(reader=open_gpu_reader())
    start = time.thread_time()  # this thread's CPU time: what sampling costs, whatever else the machine runs
    for _ in range(200):
        sampler.read()
    per_sample = (time.thread_time() - start) / 200
    # At 4 samples a second that is under 0.4% of one core (NVML adds microseconds per GPU).
    assert per_sample < 1e-3, per_sample


def test_without_a_gpu_the_reader_says_so():
    reader = open_gpu_reader()
    assert reader.source in ("none", "nvml", "torch")
    if not torch.cuda.is_available():
        assert reader.source == "none" and reader.read() == ()


class FakeNvml:
    """What pynvml offers, for three GPUs in NVML order; torch sees two of them, in another order."""

    def __init__(self) -> None:
        self.uuids = ["GPU-aaa", "GPU-bbb", "GPU-ccc"]
        self.used = [1 * GIB, 2 * GIB, 3 * GIB]
        self.shut = False

    def nvmlInit(self):  # noqa: N802 (pynvml's names)
        pass

    def nvmlShutdown(self):  # noqa: N802
        self.shut = True

    def nvmlDeviceGetCount(self):  # noqa: N802
        return 3

    def nvmlDeviceGetHandleByIndex(self, i):  # noqa: N802
        return i

    def nvmlDeviceGetName(self, h):  # noqa: N802
        return f"Card {h}".encode()

    def nvmlDeviceGetUUID(self, h):  # noqa: N802
        return self.uuids[h]

    def nvmlDeviceGetMemoryInfo(self, h):  # noqa: N802
        return SimpleNamespace(used=self.used[h], total=24 * GIB)


def test_nvml_reader_follows_torch_device_order(monkeypatch):
    import optim.monitoring.gpu_memory_readers as readers

    nvml = FakeNvml()
    monkeypatch.setattr(readers, "_torch_uuids", lambda: ["ccc", "aaa"])  # CUDA_VISIBLE_DEVICES=2,0
    reader = NvmlReader(nvml)
    assert reader.read() == (
        GpuReading(0, "Card 2", 3 * GIB, 24 * GIB),
        GpuReading(1, "Card 0", 1 * GIB, 24 * GIB),
    )
    reader.close()
    assert nvml.shut
    monkeypatch.setattr(readers, "_torch_uuids", lambda: None)  # torch cannot say: NVML's order
    assert [r.name for r in NvmlReader(FakeNvml()).read()] == ["Card 0", "Card 1", "Card 2"]


def gpu_samples(count: int) -> list[MemorySample]:
    return [
        MemorySample(t, (GpuReading(0, "Card", int((2 + t) * GIB), 8 * GIB),), 10 * GIB, 32 * GIB, 3 * GIB, GIB)
        for t in range(count)
    ]


def test_report_and_chart_of_a_gpu_run():
    record = RunRecord(
        "qwen_image_edit_2509_fp8_e4m3fn.safetensors",
        4,
        (
            PhaseStat("encode", 1.0, 3 * GIB, 4 * GIB),
            PhaseStat("denoise", 2.0, 5 * GIB, 6 * GIB),
            PhaseStat("decode", 1.0, 2 * GIB, 3 * GIB),
        ),  # fmt: skip
        "  transformer: 10 of 60 blocks resident",
        job=JobShape("edit", 1024, 1024),
        predicted_phase_peaks=(("encode", 4 * GIB), ("denoise", int(6.3 * GIB)), ("decode", 3 * GIB)),
        device="cuda:0",
    )
    samples = gpu_samples(5)
    text = monitor_report(samples[-1], "nvml", record)
    assert "GPU 0 Card: 6.00 / 8.00 GiB used (NVML)" in text
    assert "pinned by QwenFit 1.00 GiB" in text and "0.500 s/step" in text
    assert "denoise 6.00 of 6.30" in text and "(+5.0%)" in text and "10 of 60 blocks resident" in text
    marks = [SimpleNamespace(t=t, label=label) for t, label in ((0, "encode"), (1, "denoise"), (3, "decode"))]
    image = draw_run_chart(samples, marks, record, window=(0, 4))
    assert image.size == (768, 384)
    assert len(image.getcolors(maxcolors=1 << 16)) > 10  # bands, lines and text were drawn
    empty = draw_run_chart([], [], None)
    assert empty.size == (768, 384)
    assert "no QwenFit run yet" in monitor_report(samples[0], "none", None)


@pytest.mark.parametrize("interval", [0.0, 61])
def test_interval_out_of_range_is_refused(interval):
    with pytest.raises(ValueError, match="interval_s"):
        MemorySampler(interval_s=interval)
