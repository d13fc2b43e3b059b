"""The host-memory plan: which once-per-run weights stay in the files, as far as the budget needs."""

from __future__ import annotations

from dataclasses import replace

import pytest
from real_size import real_sizes

from optim.planning.host_memory import FILES, MEMORY, READ_AHEAD, HostMemory, HostWeights, host_budget_bytes, plan_host
from optim.planning.planner import Gpu, pinned_host_bytes, plan_run
from optim.planning.step_time import PAGE_CACHE_READ_BYTES, DeviceSpeed, estimate_step
from optim.qwen.job_shape import default_job
from optim.qwen.variants import Variant
from optim.settings import OffloadSettings, VaeSettings

GIB = 1024**3


def weights(**overrides) -> HostWeights:
    values = dict(
        transformer=int(20.4 * GIB),
        modulation=int(6.8 * GIB),
        text_encoder=int(9.4 * GIB),
        text_units=int(7.2 * GIB),
        vae=int(0.25 * GIB),
        text_encoder_can_stay_in_files=True,
        modulation_can_stay_in_files=True,
    )
    return HostWeights(**{**values, **overrides})


def test_host_plan_reads_files_only_as_far_as_the_budget_needs() -> None:
    assert plan_host(weights(), None).text_encoder == MEMORY
    assert plan_host(weights(), 64 * GIB).modulation == MEMORY
    plan = plan_host(weights(), 24 * GIB)
    assert (plan.text_encoder, plan.modulation) == (FILES, FILES)
    assert plan.predicted_bytes <= 24 * GIB
    plan = plan_host(weights(), 30 * GIB)
    assert (plan.text_encoder, plan.modulation) == (FILES, MEMORY)
    short = plan_host(weights(modulation_can_stay_in_files=False, text_encoder_can_stay_in_files=False), 24 * GIB)
    assert (short.text_encoder, short.modulation) == (MEMORY, MEMORY)
    assert "may swap" in "\n".join(short.describe_lines())


def test_unknown_host_budget_is_refused_with_the_choices() -> None:
    from optim.errors import QwenFitError

    with pytest.raises(QwenFitError, match="host RAM budget='12 GB' is not supported; pick one of auto, minimal"):
        OffloadSettings(host_budget="12 GB")


def test_a_16_gb_machine_reads_the_first_blocks_from_the_files() -> None:
    """fp8 split files on a 16 GB machine: after the text encoder and the modulation, the first blocks stay
    in the files, as many as the budget needs, and the prediction fits the budget."""
    budget = host_budget_bytes("16 GB")
    assert budget == int(16 * GIB * 0.625)  # a named size is the machine's RAM, planned as auto would there
    blocks = int(13.3 * GIB)
    fp8 = weights(blocks=blocks, block_count=60, blocks_can_stay_in_files=True)
    plan = plan_host(fp8, budget)
    assert (plan.text_encoder, plan.modulation) == (FILES, FILES)
    assert 0 < plan.blocks_in_files < 60 and plan.read_ahead == READ_AHEAD
    assert plan.predicted_bytes <= budget
    one_fewer = plan_host(fp8, budget + blocks // 60)
    assert one_fewer.blocks_in_files == plan.blocks_in_files - 1  # only as many as the budget needs
    assert "transformer blocks 0-" in "\n".join(plan.describe_lines())
    # Blocks quantized on load have no copy on disk: they stay in memory, and the plan says it may swap.
    assert plan_host(replace(fp8, blocks_can_stay_in_files=False), budget).blocks_in_files == 0
    # Enough RAM: nothing of the blocks is read from the files.
    assert plan_host(fp8, host_budget_bytes("64 GB")).blocks_in_files == 0
    assert plan_host(fp8, 0).blocks_in_files == 60


def test_pinned_memory_and_step_time_count_the_blocks_read_from_the_files() -> None:
    """bf16 real-size sizes on an 8 GB card, half the blocks in the files."""
    sizes = real_sizes()
    memory = HostMemory(10 * GIB, FILES, FILES, 9 * GIB)
    short = replace(memory, blocks_in_files=30, read_ahead=4)
    assert pinned_host_bytes(sizes, "streamed", memory) - pinned_host_bytes(sizes, "streamed", short) == (
        (30 - 4) * sizes.block_bytes
    )
    job = default_job(Variant.EDIT_2509)
    plan = plan_run(sizes, job, OffloadSettings(), VaeSettings(), [Gpu("cuda:0", 7 * GIB)], short)
    estimate = estimate_step(sizes, job, plan, DeviceSpeed("cuda:0", 800e12, 50e9))
    read_blocks = sum(1 for b in plan.streamed_blocks if b < 30)
    assert 0 < read_blocks < len(plan.streamed_blocks)  # the GPU keeps the first blocks: read once, not per step
    assert estimate.read_bytes == read_blocks * sizes.block_bytes
    assert estimate.read_seconds == pytest.approx(estimate.read_bytes / PAGE_CACHE_READ_BYTES)
    assert estimate.seconds >= estimate.read_seconds
    assert "read from the model files per step" in estimate.basis
