"""The planner's choices for the rigs of issue 20 (real-size Edit 1024, one reference), with sequence
parallelism asked for (``sequence_parallel=True``: the engine does not run it yet, so only the tests
and the preview ask) and without (today's plans, unchanged). The token arithmetic itself is tested in
tests/unit/execution/test_sequence_parallel.py."""

from __future__ import annotations

import pytest
from real_size import real_sizes

from optim.planning.plan import CFG_PARALLEL, ONE_GPU, SEQUENCE_PARALLEL, SPLIT, Plan
from optim.planning.planner import SAFETY, Gpu, plan_run, relative_step
from optim.qwen.job_shape import JobShape
from optim.settings import OffloadSettings, VaeSettings

GIB = 1024**3
LIGHTNING = JobShape("edit", 1024, 1024, references=1, cfg=False, steps=8)
WITH_CFG = JobShape("edit", 1024, 1024, references=1, steps=40)


def plan(job: JobShape, *gib: float, sequence_parallel: bool = True, strategy: str = "auto") -> Plan:
    cards = tuple(Gpu(f"cuda:{i}", int(g * GIB)) for i, g in enumerate(gib))
    offload = OffloadSettings(gpus="all", multi_gpu=strategy)
    return plan_run(real_sizes(), job, offload, VaeSettings(), cards, sequence_parallel=sequence_parallel)


def within_budgets(p: Plan, *gib: float) -> bool:
    budgets = {f"cuda:{i}": g * GIB for i, g in enumerate(gib)}
    return all(peak <= budgets[device] * SAFETY for device, peak in p.device_peaks)


def test_two_8_gib_gpus_without_cfg_split_the_image_tokens() -> None:
    """Lightning on 2 x 8 GB: each GPU streams its own blocks and computes half the tokens; without the
    flag the plan is today's block split."""
    today = plan(LIGHTNING, 8, 8, sequence_parallel=False)
    assert today.strategy == SPLIT and today.reason == ""
    p = plan(LIGHTNING, 8, 8)
    assert p.strategy == SEQUENCE_PARALLEL and p.devices == ("cuda:0", "cuda:1") and p.cfg == "off"
    assert p.reason.startswith("CFG off: split the image tokens over 2 GPUs (4096 of 8192 each)")
    assert 0 < len(p.resident_blocks) < 60 and p.slots >= 2 and within_budgets(p, 8, 8)
    # Fewer resident blocks than the split (each GPU holds its own copy), but half the compute per GPU.
    assert len(p.resident_blocks) < len(today.resident_blocks)
    assert relative_step(p) < relative_step(today) == 1.0
    text = p.describe()
    assert "GPUs: sequence-parallel (CFG off: split the image tokens over 2 GPUs" in text
    assert "cuda:1 holds blocks 0-" in text and "its own ring for blocks" in text and "1/2 of the image tokens" in text


def test_two_8_gib_gpus_with_cfg_keep_the_block_split() -> None:
    """CFG on: sequence parallelism is not a candidate, and CFG-parallel needs every block resident on
    both GPUs (streaming replicas are not planned yet): the block split, with or without the flag."""
    p = plan(WITH_CFG, 8, 8)
    assert p == plan(WITH_CFG, 8, 8, sequence_parallel=False)
    assert p.strategy == SPLIT and p.replica_device is None and p.streamed_blocks


def test_24_and_8_gib_gpus() -> None:
    """Mismatched memory: without CFG the 8 GB card limits what each GPU keeps resident, and the split
    of tokens still predicts the shorter step; with CFG the small card holds a few of the split's blocks."""
    p = plan(LIGHTNING, 24, 8)
    assert p.strategy == SEQUENCE_PARALLEL and within_budgets(p, 24, 8)
    alone_on_8 = plan(LIGHTNING, 8, 8)
    assert len(p.resident_blocks) >= len(alone_on_8.resident_blocks)
    assert relative_step(p) < 1.0
    with_cfg = plan(WITH_CFG, 24, 8)
    assert with_cfg.strategy == SPLIT and 0 < with_cfg.block_devices.count(1) < 60


def test_two_24_gib_gpus() -> None:
    """2 x 24 GB: the split holds every bf16 block; without CFG, splitting the tokens halves the compute
    at the price of streaming a few blocks on each GPU."""
    p = plan(LIGHTNING, 24, 24)
    assert p.strategy == SEQUENCE_PARALLEL and within_budgets(p, 24, 24)
    assert len(p.resident_blocks) > 30 and relative_step(p) == 0.5
    assert plan(LIGHTNING, 24, 24, sequence_parallel=False).streamed_blocks == ()
    with_cfg = plan(WITH_CFG, 24, 24)
    assert with_cfg.strategy == SPLIT and with_cfg.streamed_blocks == ()


def test_large_gpus_without_cfg_use_the_second_gpu() -> None:
    """2 x 140 GB without CFG: today the second GPU is left alone; split tokens hold every block on both."""
    assert plan(LIGHTNING, 140, 140, sequence_parallel=False).strategy == ONE_GPU
    p = plan(LIGHTNING, 140, 140)
    assert p.strategy == SEQUENCE_PARALLEL and p.streamed_blocks == () and p.slots == 0
    peaks = dict(p.device_peaks)
    assert peaks["cuda:1"] < peaks["cuda:0"]  # the first GPU also holds the text encoder and the VAE
    assert plan(WITH_CFG, 140, 140).strategy == CFG_PARALLEL  # CFG on: unchanged


def test_gpu_counts_that_do_not_divide_the_heads_are_not_used() -> None:
    """Five GPUs: 24 heads split over 4 of them, never 5."""
    p = plan(LIGHTNING, 140, 140, 140, 140, 140)
    assert p.strategy == SEQUENCE_PARALLEL and len(p.devices) == 4 and relative_step(p) == 0.25
    # Each GPU's activations follow its share of the image tokens: a quarter holds less than a half.
    two = plan(LIGHTNING, 140, 140)
    assert dict(p.device_peaks)["cuda:1"] < dict(two.device_peaks)["cuda:1"]


def test_a_small_second_gpu_keeps_the_block_split() -> None:
    """8 GB + 3 GB: the small card holds almost no block, so each GPU would stream nearly all of them:
    the predicted gain is under 10% and today's block split stays."""
    p = plan(LIGHTNING, 8, 3)
    assert p.strategy == SPLIT and p == plan(LIGHTNING, 8, 3, sequence_parallel=False)


@pytest.mark.parametrize("strategy", ["split", "cfg_parallel"])
def test_an_explicit_strategy_is_kept(strategy: str) -> None:
    if strategy == "split":
        assert plan(LIGHTNING, 24, 24, strategy=strategy).strategy == SPLIT
    else:
        with pytest.raises(Exception, match="CFG-parallel cannot run"):
            plan(LIGHTNING, 24, 24, strategy=strategy)


def _split_with_speeds(job: JobShape, budgets: tuple[float, ...], speeds: tuple[float, ...]) -> Plan:
    cards = tuple(Gpu(f"cuda:{i}", int(g * GIB), speed=s) for i, (g, s) in enumerate(zip(budgets, speeds, strict=True)))
    return plan_run(real_sizes(), job, OffloadSettings(gpus="all", multi_gpu="split"), VaeSettings(), cards)


def test_a_block_split_puts_its_blocks_on_the_faster_gpu_first() -> None:
    """Mismatched GPUs (issue 20 item 3): a split's blocks run one GPU after the other, so the faster
    GPU takes as many as it holds; equal speeds keep today's order (the first GPU first)."""
    same = _split_with_speeds(WITH_CFG, (140, 140), (1.0, 1.0))
    assert same.devices == () and len(same.resident_blocks) == 60  # all on the first GPU: no hops
    faster_second = _split_with_speeds(WITH_CFG, (140, 140), (1.0, 2.0))
    assert faster_second.devices == ("cuda:0", "cuda:1") and faster_second.block_devices == (1,) * 60
    even = _split_with_speeds(WITH_CFG, (24, 24), (1.0, 1.0))
    skewed = _split_with_speeds(WITH_CFG, (24, 24), (1.0, 2.0))
    assert even.streamed_blocks == skewed.streamed_blocks == () and within_budgets(skewed, 24, 24)
    assert skewed.block_devices.count(1) > even.block_devices.count(1)
