"""The memory planner on the real-size model (sizes measured from meta modules, no memory used)."""

from __future__ import annotations

import pytest
import torch
from real_size import plan_one, real_sizes

from optim.errors import QwenFitError
from optim.execution.devices import usable_bytes
from optim.planning.planner import SAFETY
from optim.quant.fp8_matmul import Fp8MatmulLinear
from optim.quant.int8 import Int8Linear
from optim.quant.nf4 import Nf4Linear
from optim.qwen.job_shape import JobShape, default_job
from optim.settings import CARD_BUDGETS

GIB = 1024**3


def test_real_size_measurements() -> None:
    sizes = real_sizes()
    assert sizes.blocks == 60
    # One block without modulation: 2 x (attention 37.7 M + MLP 75.5 M) params in bf16 (field notes).
    assert 420 * 2**20 < sizes.block_bytes < 445 * 2**20
    assert 12.5 * GIB < sizes.modulation_bytes < 12.8 * GIB  # a third of the transformer


@pytest.mark.parametrize("kind", ["edit", "layered"])
@pytest.mark.parametrize("card", ["8 GB", "12 GB", "16 GB", "24 GB"])
def test_plans_fit_their_budget(kind: str, card: str) -> None:
    budget = int(CARD_BUDGETS[card] * GIB)
    plan = plan_one(default_job(kind), budget)
    assert plan.predicted_peak_bytes <= budget * SAFETY
    assert len(plan.resident_blocks) + len(plan.streamed_blocks) == 60
    # Each phase's peak is what the plan says it is, and the largest is the one it predicts.
    assert plan.predicted_peak_bytes == max(peak for _, peak in plan.phase_peaks)
    text = plan.describe()
    assert f"{len(plan.resident_blocks)} of 60 blocks resident" in text
    assert f"(max {plan.predicted_peak_bytes / GIB:.2f} GiB)" in text


def test_two_calls_plan_for_one_sample_at_a_time() -> None:
    """Two calls hold one sample's activations: more blocks fit the same budget."""
    budget, job = int(CARD_BUDGETS["8 GB"] * GIB), default_job("edit")
    batched = plan_one(job, budget)
    two_calls = plan_one(job, budget, cfg="two_calls")
    assert two_calls.cfg == "two_calls"
    assert len(two_calls.resident_blocks) > len(batched.resident_blocks)


def test_more_budget_keeps_more_blocks_resident() -> None:
    job = default_job("edit")
    resident = [len(plan_one(job, int(v * GIB)).resident_blocks) for v in CARD_BUDGETS.values()]
    assert resident == sorted(resident) and resident[0] < resident[-1]
    unlimited = plan_one(job, None)
    assert len(unlimited.resident_blocks) == 60 and unlimited.text_encoder == "resident"


@pytest.mark.parametrize("budget", [int(22 * GIB), None])
def test_every_block_streamed_in_blocks_mode(budget: int | None) -> None:
    """Regression: with no budget (unlimited, or the CPU) the old planner kept every block resident
    in mode "blocks"; the mode means stream every block, whatever the budget."""
    plan = plan_one(default_job("edit"), budget, mode="blocks")
    assert plan.resident_blocks == () and len(plan.streamed_blocks) == 60 and plan.slots >= 2


def test_too_small_budget_names_the_smallest_workable_one() -> None:
    with pytest.raises(QwenFitError, match=r"needs at least (\d+\.\d) GiB") as info:
        plan_one(default_job("edit"), 2 * GIB)
    needed = float(info.value.args[0].split("needs at least ")[1].split(" GiB")[0])
    # That budget really works.
    plan_one(default_job("edit"), int((needed + 0.1) * GIB))


def test_layered_caption_needs_a_resident_language_model() -> None:
    captioning = JobShape("layered", 640, 640, references=0, layers=4, caption=True)
    with pytest.raises(QwenFitError, match="Type a prompt"):
        plan_one(captioning, int(7 * GIB))
    plan = plan_one(captioning, int(45 * GIB))
    assert plan.text_encoder == "resident"


def test_budgets() -> None:
    assert usable_bytes("unlimited", torch.device("cpu")) is None
    assert usable_bytes("8 GB", torch.device("cpu")) is None  # no GPU: no VRAM budget applies
    with pytest.raises(QwenFitError, match="pick one of"):
        usable_bytes("7 GB", torch.device("cpu"))


@pytest.mark.parametrize(("cls", "tolerance"), [(Int8Linear, 0.01), (Nf4Linear, 0.12), (Fp8MatmulLinear, 0.06)])
def test_compressed_linears_stay_close_to_dense(cls, tolerance: float) -> None:
    torch.manual_seed(0)
    dense = torch.nn.Linear(256, 128)
    x = torch.randn(4, 256)
    layer = cls(dense.weight.data, dense.bias.data)
    assert not list(p for p in layer.parameters() if p.ndim == 2)  # weights are buffers: they stream compressed
    want = dense(x)
    error = (layer(x) - want).norm() / want.norm()
    assert error < tolerance


def test_memory_another_model_holds_is_left_out_of_the_first_gpus_budget():
    """ComfyUI 0.8.0 kept 2.28 GiB of its own Qwen-Image model on an 8 GB card after QwenFit asked for room
    (bench/results/handback_080_h100_2026-12-07): a plan for the whole 7.0 GiB ran out of memory there."""
    from optim.planning.planner import Gpu, room_beside_others

    gib = 2**30
    gpus = (Gpu("cuda:0", 7 * gib), Gpu("cuda:1", 7 * gib))
    beside = room_beside_others(gpus, int(2.28 * gib))
    assert beside[0].budget_bytes == 7 * gib - int(2.28 * gib) and beside[1] == gpus[1]
    assert room_beside_others(gpus, 0) is gpus
    assert room_beside_others((Gpu("cuda:0", None),), gib)[0].budget_bytes is None  # no limit: nothing to leave
    assert room_beside_others((Gpu("cuda:0", gib),), 2 * gib)[0].budget_bytes == 0
