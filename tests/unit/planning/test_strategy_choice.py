"""CFG-parallel with streaming replicas, and the planner's choice among one GPU, a block split and
CFG-parallel by the predicted step (real-size Edit 1024, one reference, CFG on)."""

from __future__ import annotations

from real_size import plan_many, plan_one

from optim.planning.plan import CFG_PARALLEL, ONE_GPU
from optim.planning.planner import SAFETY, Gpu
from optim.planning.strategy_choice import relative_step
from optim.qwen.job_shape import JobShape

GIB = 1024**3
WITH_CFG = JobShape("edit", 1024, 1024, references=1, steps=40)


def cards(*gib: float | None, speeds: tuple[float, ...] = ()) -> list[Gpu]:
    speeds = speeds or (1.0,) * len(gib)
    return [
        Gpu(f"cuda:{i}", None if g is None else int(g * GIB), speed=s)
        for i, (g, s) in enumerate(zip(gib, speeds, strict=True))
    ]


def test_two_8_gib_gpus_run_cfg_in_parallel_each_streaming_from_the_one_host_arena() -> None:
    p = plan_many(WITH_CFG, cards(8, 8))
    assert p.strategy == CFG_PARALLEL and p.cfg == CFG_PARALLEL and p.replica_device == "cuda:1"
    first, replica = p.device_resident
    assert 0 < first < replica < 20 and p.slots >= 2  # the replica holds no text encoder nor VAE
    assert p.resident_blocks == tuple(range(first)) and p.streamed_blocks == tuple(range(first, 60))
    assert all(peak <= 8 * GIB * SAFETY for _, peak in p.device_peaks) and len(p.device_peaks) == 2
    # Both rings read the one page-locked arena: no more pinned memory than one GPU's plan.
    assert p.pinned_bytes == plan_one(WITH_CFG, 8 * GIB).pinned_bytes
    assert relative_step(p) == 0.5
    assert p.reason.startswith("CFG on: each of 2 GPUs computes one sample (prompt / negative prompt), streaming ")
    text = p.describe()
    assert f"cuda:1 holds blocks 0-{replica - 1}, its own {p.slots}-slot ring for blocks {replica}-59; " in text
    assert "computes the negative prompt's sample" in text and "computes the prompt's sample" in text


def test_a_24_gib_and_an_8_gib_gpu_each_keep_what_they_hold() -> None:
    p = plan_many(WITH_CFG, cards(24, 8))
    alone = plan_one(WITH_CFG, 24 * GIB)
    assert p.strategy == CFG_PARALLEL and p.replica_device == "cuda:1"
    big, small = p.device_resident
    assert 0 < small < 20 < big < 60 and p.pinned_bytes == alone.pinned_bytes
    assert relative_step(p) == 0.5 < relative_step(alone) == 1.0


def test_two_24_gib_gpus_prefer_cfg_parallel_to_the_block_split() -> None:
    """The split holds every block but runs them one GPU after the other; CFG-parallel streams some on
    each and computes the two samples at once."""
    p = plan_many(WITH_CFG, cards(24, 24))
    assert p.strategy == CFG_PARALLEL and p.streamed_blocks
    split = plan_many(WITH_CFG, cards(24, 24), strategy="split")
    assert split.streamed_blocks == () and relative_step(split) == 1.0


def test_a_slow_replica_is_not_worth_it() -> None:
    """A GPU at 0.4 of the first's speed would take 1.25 steps for its half: one GPU does better."""
    p = plan_many(WITH_CFG, cards(None, None, speeds=(1.0, 0.4)))
    assert p.strategy == ONE_GPU
    assert p.reason == (
        "every block fits on the first GPU; predicted step 1.00x one GPU; "
        "CFG-parallel would predict 1.25x, not 10% shorter"
    )


def test_the_replica_is_the_gpu_with_the_most_room_then_the_fastest() -> None:
    assert plan_many(WITH_CFG, cards(24, 8, 16)).replica_device == "cuda:2"
    assert plan_many(WITH_CFG, cards(24, 16, 16, speeds=(1.0, 1.0, 1.5))).replica_device == "cuda:2"


def test_blocks_mode_streams_every_block_on_both_gpus() -> None:
    p = plan_many(WITH_CFG, cards(8, 8), mode="blocks")
    assert p.strategy == CFG_PARALLEL and p.device_resident == (0, 0) and p.slots >= 2
    assert p.reason.startswith("CFG on: each of 2 GPUs computes one sample (prompt / negative prompt), each "
                               "streaming 60 blocks from the shared host memory")  # fmt: skip
