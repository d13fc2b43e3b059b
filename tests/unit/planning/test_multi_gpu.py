"""Several GPUs: the planner's placement decisions (real-size model, 1, 2 and 4 GPUs of assorted sizes).
The CFG-parallel computation itself is tested in tests/unit/execution/test_cfg_parallel.py."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from real_size import plan_many, plan_one
from tiny_transformer import CPU

from optim.errors import QwenFitError
from optim.execution.devices import CPU_NOTE, resolve_gpus
from optim.planning.plan import CFG_PARALLEL, ONE_GPU, SPLIT
from optim.planning.planner import SAFETY, Gpu
from optim.qwen.job_shape import JobShape, default_job
from optim.settings import OffloadSettings

GIB = 1024**3
EDIT_1024 = JobShape("edit", 1024, 1024, references=1, steps=40)


def gpus(*gib: float | None) -> list[Gpu]:
    return [Gpu(f"cuda:{i}", None if g is None else int(g * GIB)) for i, g in enumerate(gib)]


def within_budgets(plan, cards: list[Gpu]) -> bool:
    budgets = {g.device: g.budget_bytes for g in cards}
    return all(budgets[d] is None or peak <= budgets[d] * SAFETY for d, peak in plan.device_peaks)


def blocks_on(plan, device: str) -> int:
    index = plan.devices.index(device)
    return sum(1 for d in plan.block_devices if d == index)


def test_a_second_gpu_too_small_for_a_block_gives_the_one_gpu_plan() -> None:
    """One planner for 1..N GPUs: a GPU that holds nothing changes nothing but the reason."""
    for budget in (7.0, 22.0):
        alone = plan_one(EDIT_1024, int(budget * GIB))
        beside = plan_many(EDIT_1024, gpus(budget, 0.5))
        assert replace(beside, reason=alone.reason) == alone
        assert alone.strategy == ONE_GPU and alone.devices == () and alone.reason == "cuda:0 alone: gpus 'one'"
        assert beside.reason.endswith("; predicted step 1.00x one GPU; CFG-parallel does not fit "
                                      "(each GPU needs one sample's activations and a ring)")  # fmt: skip


@pytest.mark.parametrize("kind", ["edit", "layered"])
def test_two_large_gpus_run_cfg_in_parallel(kind: str) -> None:
    job = EDIT_1024 if kind == "edit" else default_job("layered")
    cards = gpus(140, 140)
    plan = plan_many(job, cards)
    assert plan.strategy == CFG_PARALLEL and plan.cfg == CFG_PARALLEL
    assert plan.replica_device == "cuda:1" and plan.devices == ("cuda:0", "cuda:1")
    assert len(plan.resident_blocks) == 60 and plan.streamed_blocks == () and plan.device_resident == (60, 60)
    assert plan.text_encoder == "resident" and within_budgets(plan, cards)
    # The replica GPU holds the blocks and one sample's activations: less than the first GPU.
    peaks = dict(plan.device_peaks)
    assert 25 * GIB < peaks["cuda:1"] < peaks["cuda:0"]
    assert "cuda:1 holds blocks 0-59; computes the negative prompt's sample" in plan.describe()


def test_two_24_gib_gpus_split_the_bf16_blocks_without_streaming() -> None:
    """Asked for a block split (auto prefers CFG-parallel here: tests/unit/planning/test_strategy_choice.py)."""
    cards = gpus(24, 24)
    plan = plan_many(EDIT_1024, cards, strategy="split")
    assert plan.strategy == SPLIT and plan.streamed_blocks == () and plan.slots == 0
    assert blocks_on(plan, "cuda:0") + blocks_on(plan, "cuda:1") == 60
    assert blocks_on(plan, "cuda:1") > 0 and within_budgets(plan, cards)
    # Blocks run in order: the first GPU's run, then the second's (one hop there, one back).
    assert list(plan.block_devices) == sorted(plan.block_devices)
    # The 7B text encoder does not fit beside them: it streams on the first GPU while encoding.
    assert plan.text_encoder == "streamed"
    # One such card alone must stream most blocks.
    alone = plan_one(EDIT_1024, cards[0].budget_bytes)
    assert len(alone.streamed_blocks) > 10


def test_cfg_parallel_refused_with_the_fix_when_a_gpu_cannot_hold_its_sample() -> None:
    """1.5 GiB holds no sample's activations beside a ring: the block split fits, CFG-parallel does not."""
    assert plan_many(EDIT_1024, gpus(8, 1.5)).strategy in (ONE_GPU, SPLIT)
    with pytest.raises(QwenFitError, match="CFG-parallel cannot run: each of its GPUs must hold one sample's.*"
                                           "Pick multi_gpu 'auto' or 'split'"):  # fmt: skip
        plan_many(EDIT_1024, gpus(8, 1.5), strategy="cfg_parallel")
    lightning = JobShape("edit", 1024, 1024, cfg=False, steps=8)
    with pytest.raises(QwenFitError, match="without CFG"):
        plan_many(lightning, gpus(140, 140), strategy="cfg_parallel")


def test_a_split_leaves_the_second_gpu_alone_when_one_holds_everything() -> None:
    lightning = JobShape("edit", 1024, 1024, cfg=False, steps=8)
    plan = plan_many(lightning, gpus(140, 140), strategy="split")
    assert plan.strategy == ONE_GPU and plan.devices == () and plan.cfg == "off"


def test_text_encoder_and_vae_on_one_gpu_transformer_on_the_other() -> None:
    """A small first GPU and a large second one: every block goes to the second."""
    cards = gpus(24, 48)
    plan = plan_many(EDIT_1024, cards, strategy="split")
    assert blocks_on(plan, "cuda:1") == 60 and plan.text_encoder == "resident"
    assert within_budgets(plan, cards)
    text = plan.describe()
    assert "cuda:0 holds text encoder, VAE, small parts (" in text and "cuda:1 holds blocks 0-59" in text


def test_two_calls_cfg_rules_out_cfg_parallel() -> None:
    plan = plan_many(EDIT_1024, gpus(140, 140), cfg="two_calls")
    assert plan.strategy != CFG_PARALLEL and plan.replica_device is None


@pytest.mark.parametrize("kind", ["edit", "layered"])
def test_more_small_gpus_keep_more_blocks_resident(kind: str) -> None:
    job = EDIT_1024 if kind == "edit" else default_job("layered")
    one = plan_one(job, int(7 * GIB))
    two = plan_many(job, gpus(7, 7), strategy="split")
    four = plan_many(job, gpus(7, 7, 7, 7), strategy="split")
    assert len(one.resident_blocks) < len(two.resident_blocks) < len(four.resident_blocks) < 60
    for plan, count in ((two, 2), (four, 4)):
        assert plan.strategy == SPLIT and len(plan.devices) == count and within_budgets(plan, gpus(*[7] * count))
        assert plan.slots >= 2  # the rest still streams, through a ring on the first GPU


def test_four_assorted_gpus() -> None:
    cards = gpus(12, 24, 16, 24)
    plan = plan_many(EDIT_1024, cards, strategy="split")
    assert plan.streamed_blocks == () and within_budgets(plan, cards)
    assert sum(plan.block_devices.count(i) for i in range(len(plan.devices))) == 60


def test_budgets_too_small_for_any_split_name_the_budget_that_works() -> None:
    with pytest.raises(QwenFitError, match=r"needs at least \d+\.\d GiB"):
        plan_many(EDIT_1024, gpus(2, 2))


def test_multi_gpu_choice_falls_back_with_a_message_on_the_cpu() -> None:
    assert resolve_gpus(OffloadSettings(), CPU) == ((Gpu("cpu", None),), (CPU_NOTE,))
    found, notes = resolve_gpus(OffloadSettings(vram_budget="24 GB", gpus="all"), CPU)
    assert found == (Gpu("cpu", None),) and notes[0].startswith("multi-GPU preset: no GPU is visible")


def test_measured_gpu_speeds_within_10_percent_of_the_first_count_as_equal(monkeypatch) -> None:
    """Several GPUs get their bf16 matmul rate over the first's; noise between identical GPUs does not
    share the work unevenly, and a speed that may not be measured now leaves every GPU equal."""
    import optim.execution.devices as devices
    from optim.planning.step_time import DeviceSpeed

    rates = {"cuda:0": 100e12, "cuda:1": 93e12, "cuda:2": 50e12}
    monkeypatch.setattr(devices, "known_device_speed", lambda device, dtype: None)
    monkeypatch.setattr(
        devices, "device_speed", lambda device, dtype: DeviceSpeed(str(device), rates[str(device)], 1e9)
    )
    three = [torch.device("cuda", i) for i in range(3)]
    assert devices.relative_speeds(three, lambda: True) == (1.0, 1.0, 0.5)
    assert devices.relative_speeds(three, lambda: False) == (1.0, 1.0, 1.0)
