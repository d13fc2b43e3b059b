"""The host-memory plan: which once-per-run weights stay in the files, as far as the budget needs."""

from __future__ import annotations

import pytest

from optim.planning.host_memory import FILES, MEMORY, HostWeights, plan_host
from optim.settings import OffloadSettings

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
