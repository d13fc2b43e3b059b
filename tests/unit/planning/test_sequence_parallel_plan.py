"""Sequence-parallel plans for the rigs of issue 20 (real-size Edit 1024, one reference, CFG off as with a
Lightning LoRA): the heads and image tokens each GPU computes, what each keeps resident and streams, and
when the planner prefers them. The token arithmetic itself is tested in
tests/unit/execution/test_sequence_parallel.py."""

from __future__ import annotations

import pytest
from real_size import real_sizes

from optim.errors import QwenFitError
from optim.planning.plan import CFG_PARALLEL, SEQUENCE_PARALLEL, SPLIT, Plan
from optim.planning.planner import SAFETY, Gpu, plan_run
from optim.planning.strategy_choice import relative_step
from optim.qwen.job_shape import JobShape
from optim.settings import OffloadSettings, VaeSettings

GIB = 1024**3
LIGHTNING = JobShape("edit", 1024, 1024, references=1, cfg=False, steps=8)  # 8192 image tokens
WITH_CFG = JobShape("edit", 1024, 1024, references=1, steps=40)


def plan(
    job: JobShape, *gib: float | None, speeds: tuple[float, ...] = (), strategy: str = "auto", gpus: str = "all"
) -> Plan:
    speeds = speeds or (1.0,) * len(gib)
    cards = tuple(
        Gpu(f"cuda:{i}", None if g is None else int(g * GIB), speed=s)
        for i, (g, s) in enumerate(zip(gib, speeds, strict=True))
    )
    offload = OffloadSettings(gpus=gpus, multi_gpu=strategy)
    return plan_run(real_sizes(), job, offload, VaeSettings(), cards)


def within_budgets(p: Plan, *gib: float) -> bool:
    budgets = {f"cuda:{i}": g * GIB for i, g in enumerate(gib)}
    return all(peak <= budgets[device] * SAFETY for device, peak in p.device_peaks)


def test_two_unlimited_gpus_split_heads_and_tokens_evenly_with_every_block_resident() -> None:
    """2 x H200: 12 of the 24 heads and 4096 of the 8192 image tokens each, nothing streamed."""
    p = plan(LIGHTNING, None, None)
    assert p.strategy == SEQUENCE_PARALLEL and p.devices == ("cuda:0", "cuda:1") and p.cfg == "off"
    assert p.head_shares == (12, 12) and p.device_resident == (60, 60)
    assert p.streamed_blocks == () and p.slots == 0 and p.block_devices == ()
    assert relative_step(p) == 0.5
    assert p.reason == (
        "CFG off: image tokens split 4096/4096 over 2 GPUs (12/12 heads), every block resident on each; "
        "predicted step 0.50x one GPU"
    )
    peaks = dict(p.device_peaks)
    assert peaks["cuda:1"] < peaks["cuda:0"]  # the first GPU also holds the text encoder and the VAE
    text = p.describe()
    assert f"GPUs: sequence-parallel ({p.reason})" in text
    assert "cuda:1 holds small parts, blocks 0-59; computes 12 of 24 heads and that share of the image tokens" in text


def test_two_8_gib_gpus_each_stream_through_their_own_ring() -> None:
    """2 x 8 GB: each GPU keeps the leading blocks it holds and streams the rest; half the compute each
    predicts a shorter step than the block split, whose blocks run one GPU after the other."""
    p = plan(LIGHTNING, 8, 8)
    split = plan(LIGHTNING, 8, 8, strategy="split")
    assert p.strategy == SEQUENCE_PARALLEL and within_budgets(p, 8, 8) and p.slots >= 2
    first, second = p.device_resident
    assert 0 < first < second < 60  # the first GPU also holds the text encoder and the VAE
    assert p.resident_blocks == tuple(range(first)) and p.streamed_blocks == tuple(range(first, 60))
    assert relative_step(split) == 1.0
    assert relative_step(p) == pytest.approx((60 - first) / 60) and relative_step(p) < 0.9
    assert f"its own {p.slots}-slot ring for blocks {second}-59" in p.describe()


def test_24_and_8_gib_gpus_keep_what_each_holds() -> None:
    p = plan(LIGHTNING, 24, 8)
    assert p.strategy == SEQUENCE_PARALLEL and within_budgets(p, 24, 8)
    big, small = p.device_resident
    assert small < 20 < big < 60 and p.head_shares == (12, 12)


def test_a_gpu_half_as_fast_gets_a_third_of_the_heads_and_tokens() -> None:
    p = plan(LIGHTNING, None, None, speeds=(1.0, 0.5))
    assert p.strategy == SEQUENCE_PARALLEL and p.head_shares == (16, 8)
    assert p.reason.startswith("CFG off: image tokens split 5461/2731 over 2 GPUs by speed (16/8 heads)")
    speeds = {"cuda:0": 1.0, "cuda:1": 0.5}
    assert relative_step(p, speeds) == pytest.approx(2 / 3)


def test_gpu_counts_need_not_divide_the_heads() -> None:
    """Five GPUs share 24 heads as 5/5/5/5/4: shorter than four GPUs' 6 each."""
    p = plan(LIGHTNING, None, None, None, None, None)
    assert p.strategy == SEQUENCE_PARALLEL and p.head_shares == (5, 5, 5, 5, 4)
    assert relative_step(p) == pytest.approx(5 / 24)
    # Each GPU's activations follow its share of the image tokens: a fifth holds less than a half.
    two = plan(LIGHTNING, None, None)
    assert dict(p.device_peaks)["cuda:1"] < dict(two.device_peaks)["cuda:1"]


def test_a_small_second_gpu_keeps_the_block_split() -> None:
    """8 GB + 3 GB: the small card would stream 59 of the 60 blocks, which takes nearly as long as the whole
    step: under 10% gain over the block split, and the reason says so."""
    p = plan(LIGHTNING, 8, 3)
    assert p.strategy == SPLIT
    assert p.reason.endswith("; predicted step 1.00x one GPU; sequence-parallel would predict 0.98x, not 10% shorter")


def test_sequence_parallel_asked_for_a_job_it_cannot_run_names_the_fix() -> None:
    with pytest.raises(QwenFitError, match=r"sequence parallelism cannot run: this job runs with CFG .*"
                                           "Pick multi_gpu 'auto' or 'split'"):  # fmt: skip
        plan(WITH_CFG, 24, 24, strategy="sequence_parallel")
    with pytest.raises(QwenFitError, match="needs two or more GPUs and gpus is 'one'. Set gpus to 'all'"):
        plan(LIGHTNING, 24, strategy="sequence_parallel", gpus="one")
    assert plan(LIGHTNING, 24, 24, strategy="sequence_parallel").strategy == SEQUENCE_PARALLEL


def test_cfg_parallel_asked_for_on_one_gpu_names_the_fix() -> None:
    """It used to give a one-GPU plan without a word: the user asked for two GPUs' work on one."""
    with pytest.raises(QwenFitError, match="CFG-parallel cannot run: it needs two or more GPUs and gpus is 'one'. "
                                           "Set gpus to 'all', or pick multi_gpu 'auto' or 'split'"):  # fmt: skip
        plan(WITH_CFG, 24, strategy="cfg_parallel", gpus="one")
    with pytest.raises(QwenFitError, match="CFG-parallel cannot run: it needs two or more GPUs and only cuda:0 is "
                                           "visible. Pick multi_gpu"):  # fmt: skip
        plan(WITH_CFG, 24, strategy="cfg_parallel")
    with pytest.raises(QwenFitError, match="CFG-parallel cannot run: this job runs without CFG"):
        plan(LIGHTNING, 24, strategy="cfg_parallel")  # the job's reason first, as for sequence parallelism
    assert plan(WITH_CFG, 24, 24, strategy="cfg_parallel").strategy == CFG_PARALLEL


def test_an_explicit_split_is_kept() -> None:
    assert plan(LIGHTNING, 24, 24, strategy="split").strategy == SPLIT


def _split_with_speeds(job: JobShape, budgets: tuple[float, ...], speeds: tuple[float, ...]) -> Plan:
    return plan(job, *budgets, speeds=speeds, strategy="split")


def test_a_block_split_puts_its_blocks_on_the_faster_gpu_first() -> None:
    """Mismatched GPUs (issue 20 item 3): a split's blocks run one GPU after the other, so the faster
    GPU takes as many as it holds; equal speeds keep today's order (the first GPU first)."""
    same = _split_with_speeds(WITH_CFG, (140, 140), (1.0, 1.0))
    assert same.devices == () and len(same.resident_blocks) == 60  # all on the first GPU: no hops
    faster_second = _split_with_speeds(WITH_CFG, (140, 140), (1.0, 2.0))
    assert faster_second.devices == ("cuda:0", "cuda:1") and faster_second.block_devices == (1,) * 60
    assert relative_step(faster_second, {"cuda:0": 1.0, "cuda:1": 2.0}) == 0.5
    even = _split_with_speeds(WITH_CFG, (24, 24), (1.0, 1.0))
    skewed = _split_with_speeds(WITH_CFG, (24, 24), (1.0, 2.0))
    assert even.streamed_blocks == skewed.streamed_blocks == () and within_budgets(skewed, 24, 24)
    assert skewed.block_devices.count(1) > even.block_devices.count(1)
