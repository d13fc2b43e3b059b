"""The speed ladder's choices per GPU (described by compute capability, as the multi-GPU tests describe
GPUs), and its predicted s/step for each rung."""

from __future__ import annotations

from dataclasses import replace

import pytest
from real_size import plan_one, real_sizes

from optim.errors import QwenFitError
from optim.planning import speed_ladder
from optim.planning.speed_ladder import EXACT, choose_arithmetic
from optim.planning.step_time import DeviceSpeed, cache_schedule, computed_fraction, estimate_step
from optim.qwen.job_shape import JobShape
from optim.settings import FP8, FP8_FAST, INT8, NF4

GTX_1080, RTX_2080, RTX_3060, RTX_4060, H200, RTX_5090 = (6, 1), (7, 5), (8, 6), (8, 9), (9, 0), (12, 0)
EDIT_1024 = JobShape("edit", 1024, 1024, references=1, steps=40)


@pytest.mark.parametrize(
    ("storage", "gpu", "kind", "store_as"),
    [
        (FP8, RTX_4060, "fp8", None),  # an fp8 file multiplies as stored
        (FP8, H200, "fp8", None),
        (FP8, RTX_5090, "fp8", None),
        (FP8, RTX_3060, "int8", INT8),  # no fp8 tensor cores: requantized to int8 on load
        (FP8, RTX_2080, "int8", INT8),
        (INT8, RTX_3060, "int8", None),
        (INT8, H200, "int8", None),  # int8 weights stay int8 (the user's choice of format)
        ("bf16", H200, "fp8", FP8_FAST),  # dense files are quantized per channel on load
        ("bf16", RTX_3060, "int8", INT8),
        (FP8_FAST, H200, "fp8", None),
        (FP8, None, "fp8", None),  # the CPU runs the same arithmetic (the tests rely on it)
    ],
)
def test_fast_multiplies_in_what_the_gpu_has(storage, gpu, kind, store_as):
    chosen = choose_arithmetic("fast", storage, [gpu])
    assert (chosen.rung, chosen.kind, chosen.store_as, chosen.step_cache) == ("fast", kind, store_as, False)
    assert choose_arithmetic("fastest", storage, [gpu]).step_cache


def test_several_gpus_use_what_the_weakest_has():
    assert choose_arithmetic("fast", FP8, [H200, RTX_3060]).kind == "int8"
    assert choose_arithmetic("fast", FP8, [H200, RTX_4060]).kind == "fp8"


def test_impossible_choices_are_refused_naming_the_gpus_that_can():
    with pytest.raises(QwenFitError, match=r"int8 tensor cores \(compute capability 7\.5\+: RTX 20xx") as error:
        choose_arithmetic("fast", FP8, [GTX_1080])
    assert "6.1" in str(error.value) and "speed exact" in str(error.value)
    with pytest.raises(QwenFitError, match="nf4 has no fast product"):
        choose_arithmetic("fastest", NF4, [H200])
    with pytest.raises(QwenFitError, match="speed='turbo'"):
        choose_arithmetic("turbo", FP8, [H200])


def test_exact_is_exact_everywhere_but_for_weights_made_for_fp8_matmuls():
    for gpu in (GTX_1080, RTX_3060, H200, None):
        assert choose_arithmetic("exact", FP8, [gpu]) == EXACT
        assert choose_arithmetic("exact", "bf16", [gpu]) == EXACT
    assert choose_arithmetic("exact", FP8_FAST, [H200]).kind == "fp8"


def _auto(storage: str, gpu, comfy: bool = True, triton: bool = True):
    return choose_arithmetic("auto", storage, [gpu], comfy_multiplies_8bit=comfy, triton=triton)


@pytest.mark.parametrize(
    ("storage", "gpu", "comfy", "triton", "kind", "why"),
    [
        # ComfyUI 0.8.0 multiplies scaled and mixed fp8 files in fp8 on these GPUs: so does auto, uncompiled
        (FP8, RTX_4060, True, True, "fp8", "ComfyUI multiplies this file in fp8"),
        (FP8, H200, True, True, "fp8", "ComfyUI multiplies this file in fp8"),
        (FP8, RTX_5090, True, True, "fp8", "ComfyUI multiplies this file in fp8"),
        (FP8, H200, True, False, "expanded", "Triton is not installed"),  # uncompiled torch products: slower
        (FP8, RTX_3060, True, True, "expanded", "has no fp8 tensor cores"),
        (FP8, None, True, True, "expanded", "no GPU"),
        (FP8, H200, False, True, "expanded", "ComfyUI computes these fp8_e4m3fn weights in bf16"),  # plain cast
        # Comfy-Org int8 files: int8 products where torch's beat bf16 (before Hopper)
        (INT8, RTX_3060, True, True, "int8", "ComfyUI multiplies this file in int8"),
        (INT8, RTX_4060, True, True, "int8", "ComfyUI multiplies this file in int8"),
        (INT8, H200, True, True, "expanded", "slower than bf16 on compute capability 9.0"),
        (INT8, RTX_3060, False, True, "expanded", "in bf16 too"),  # quantized on load by the pack
        ("bf16", H200, False, True, "expanded", "bf16 weights, exact"),
        (NF4, H200, False, True, "expanded", "nf4 weights, exact"),
    ],
)
def test_auto_multiplies_in_8_bits_where_comfyui_does_and_triton_makes_it_faster(
    storage, gpu, comfy, triton, kind, why
):
    chosen = _auto(storage, gpu, comfy, triton)
    assert chosen.kind == kind, chosen.reason
    assert why in chosen.reason
    assert chosen.rung == ("exact" if kind == "expanded" else "fast")
    assert not chosen.compiled  # no image of auto's waits for torch.compile
    assert not chosen.step_cache


def test_auto_cites_the_measured_deviations_and_asked_for_rungs_compile():
    chosen = _auto(FP8, H200)
    ours, comfy = speed_ladder.AGAINST_COMFY["fp8"]
    assert f"first image {ours:.1e} from exact, ComfyUI's own {comfy:.1e}" in chosen.reason
    assert ours <= comfy * 1.05  # the measured numerics that let auto multiply in fp8: no worse than ComfyUI's
    assert "not measured yet" in _auto(INT8, RTX_3060).reason  # ComfyUI's int8 path: no measurement to cite
    assert choose_arithmetic("fast", FP8, [H200]).compiled  # what the user asked for, compile included
    assert "blocks compiled on the first image" in choose_arithmetic("fast", FP8, [H200]).describe()
    assert "compiled" not in chosen.describe()


def test_the_step_cache_schedule_and_its_share():
    assert cache_schedule(6) == (0, 1, 3, 5)
    assert cache_schedule(4) == (0, 1, 3)
    assert cache_schedule(2) == (0, 1)
    assert computed_fraction(6) == pytest.approx(4 / 6)
    assert computed_fraction(6, steady=True) == pytest.approx(3 / 5)
    assert computed_fraction(40) == pytest.approx(21 / 40)


def test_each_rung_predicts_its_own_step_time():
    h200 = DeviceSpeed("H200", 783e12, 51e9, (("fp8", 1.3e15), ("int8", 847e12)))
    plan = plan_one(EDIT_1024, 7 * 2**30)

    def seconds(rung: str, storage: str = FP8) -> float:
        arithmetic = choose_arithmetic(rung, storage, [H200])
        return estimate_step(real_sizes(), EDIT_1024, replace(plan, arithmetic=arithmetic), h200, storage).seconds

    exact, fast, fastest = seconds("exact"), seconds("fast"), seconds("fastest")
    # The H200 run of 2026-11-30: 0.787 / 0.475 / 0.285 s/step (6 steps; fastest then runs 60% of steps).
    assert exact == pytest.approx(0.81, rel=0.05)
    assert fast == pytest.approx(0.48, rel=0.06)
    assert fastest == pytest.approx(fast * computed_fraction(40), rel=1e-6)
    assert seconds("fast", INT8) > fast  # int8 products are slower than fp8 on Hopper (measured)
    # auto's fast rung runs uncompiled: the H100 measured 0.692 s/step against the compiled 0.461
    auto = choose_arithmetic("auto", FP8, [H200], comfy_multiplies_8bit=True, triton=True)
    uncompiled = estimate_step(real_sizes(), EDIT_1024, replace(plan, arithmetic=auto), h200, FP8).seconds
    assert auto.kind == "fp8" and 1.3 * fast < uncompiled < 0.692 / 0.461 * fast  # the launches are not scaled
    assert exact > uncompiled > fast
    fast_plan = replace(plan, arithmetic=choose_arithmetic("fast", FP8, [H200]))
    assert "fp8 products" in estimate_step(real_sizes(), EDIT_1024, fast_plan, h200).basis
    assert "speed fast: fp8 W8A8" in fast_plan.describe()
