"""The memory planner on the real-size model (sizes measured from meta modules, no memory used)."""

from __future__ import annotations

from functools import cache

import pytest
import torch

from optim.architectures import Architecture, empty_text_encoder, empty_transformer, empty_vae
from optim.budget import CARD_BUDGETS, usable_bytes
from optim.errors import QwenFitError
from optim.job_shape import JobShape, default_job
from optim.model_sizes import ModelSizes, measure
from optim.planner import SAFETY, describe_memory_plan, plan_memory
from optim.quantized_linear import Fp8MatmulLinear, Int8Linear, Nf4Linear
from optim.variants import Variant

GIB = 1024**3


class _Parts:
    pass


@cache
def real_sizes() -> ModelSizes:
    arch = Architecture("qwen-image")
    parts = _Parts()
    parts.transformer = empty_transformer(arch, Variant.EDIT_2509).to(torch.bfloat16)
    parts.text_encoder = empty_text_encoder(arch).to(torch.bfloat16)
    parts.vae = empty_vae(arch, 3).to(torch.bfloat16)
    return measure(parts)


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
    plan = plan_memory(real_sizes(), default_job(kind), budget)
    assert plan.predicted_peak_bytes <= budget * SAFETY
    assert len(plan.resident_blocks) + len(plan.streamed_blocks) == 60
    assert plan.cfg == "batched" and plan.modulation == "precomputed"
    text = describe_memory_plan(plan, real_sizes())
    assert "blocks resident" in text and "predicted peak" in text


def test_two_calls_plan_for_one_sample_at_a_time() -> None:
    """Two calls hold one sample's activations: more blocks fit the same budget."""
    budget, job = int(CARD_BUDGETS["8 GB"] * GIB), default_job("edit")
    batched = plan_memory(real_sizes(), job, budget)
    two_calls = plan_memory(real_sizes(), job, budget, cfg="two_calls")
    assert two_calls.cfg == "two_calls"
    assert len(two_calls.resident_blocks) > len(batched.resident_blocks)


def test_more_budget_keeps_more_blocks_resident() -> None:
    job = default_job("edit")
    resident = [len(plan_memory(real_sizes(), job, int(v * GIB)).resident_blocks) for v in CARD_BUDGETS.values()]
    assert resident == sorted(resident) and resident[0] < resident[-1]
    unlimited = plan_memory(real_sizes(), job, None)
    assert len(unlimited.resident_blocks) == 60 and unlimited.text_encoder == "resident"


def test_every_block_streamed_in_blocks_mode() -> None:
    plan = plan_memory(real_sizes(), default_job("edit"), int(22 * GIB), mode="blocks")
    assert plan.resident_blocks == () and plan.slots >= 2


def test_too_small_budget_names_the_smallest_workable_one() -> None:
    with pytest.raises(QwenFitError, match=r"needs at least (\d+\.\d) GiB") as info:
        plan_memory(real_sizes(), default_job("edit"), 2 * GIB)
    needed = float(info.value.args[0].split("needs at least ")[1].split(" GiB")[0])
    # That budget really works.
    plan_memory(real_sizes(), default_job("edit"), int((needed + 0.1) * GIB))


def test_layered_caption_needs_a_resident_language_model() -> None:
    captioning = JobShape("layered", 640, 640, references=0, layers=4, caption=True)
    with pytest.raises(QwenFitError, match="Type a prompt"):
        plan_memory(real_sizes(), captioning, int(7 * GIB))
    plan = plan_memory(real_sizes(), captioning, int(45 * GIB))
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
