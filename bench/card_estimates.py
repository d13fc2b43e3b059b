"""Predicted s/step of the presets on GPUs people own: arithmetic, not measurements.

    python bench/card_estimates.py [--steps 40]

The pack's own step-time model (optim/planning/step_time.py, fitted on the H200) fed with each card's
*published* peak tensor rates, scaled by what the H200 reached of its own published peaks (bf16 783 of
989 TFLOP/s, fp8 1300 of 1979, int8 847 of 1979: bench/results), and its host link. Job: Edit 1024x1024,
one reference, true CFG, an fp8 file; the preset's plan for the card's memory. GeForce cards multiply
bf16 and fp8 with fp32 accumulation at half their fp16-accumulate rate (NVIDIA's Ampere/Ada/Blackwell
whitepapers); int8 accumulates in int32 at the full rate.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from optim.planning.model_sizes import measure  # noqa: E402
from optim.planning.planner import Gpu, plan_run  # noqa: E402
from optim.planning.speed_ladder import choose_arithmetic  # noqa: E402
from optim.planning.step_time import DeviceSpeed, estimate_step  # noqa: E402
from optim.quant.format_registry import size_as_quantized  # noqa: E402
from optim.quant.fp8_scope import FP8_SCOPES  # noqa: E402
from optim.qwen.architectures import Architecture, empty_text_encoder, empty_transformer, empty_vae  # noqa: E402
from optim.qwen.job_shape import JobShape  # noqa: E402
from optim.qwen.variants import Variant  # noqa: E402
from optim.settings import FP8, FP8_FAST, OffloadSettings, VaeSettings  # noqa: E402

T = 1e12
# What the H200 reached of its published dense peaks (bf16 989, fp8 1979, int8 1979 TFLOP/s).
REACHED = {"bf16": 783 / 989, "fp8": 1300 / 1979, "int8": 847 / 1979}
# name: (VRAM budget preset, compute capability, dense peaks in TFLOP/s: bf16 and fp8 with fp32
# accumulation, int8; host link GB/s). Published figures (NVIDIA whitepapers and spec sheets).
CARDS = {
    "RTX 3060 12 GB": ("12 GB", (8, 6), 25.6, None, 102.0, 25),
    "RTX 4060 8 GB": ("8 GB", (8, 9), 30.2, 60.5, 121.0, 12.5),  # PCIe 4.0 x8
    "RTX 4070 12 GB": ("12 GB", (8, 9), 58.3, 116.6, 233.0, 25),
    "RTX 4090 24 GB": ("24 GB", (8, 9), 165.2, 330.3, 660.6, 25),
    "RTX 5090 32 GB": ("24 GB", (12, 0), 209.5, 419.0, 838.0, 50),
    "H200 (measured rates)": ("unlimited", (9, 0), 989.0, 1979.0, 1979.0, 54.9),
}


class _Parts:
    pass


def fp8_sizes():
    arch = Architecture("qwen-image")
    parts = _Parts()
    parts.transformer = empty_transformer(arch, Variant.EDIT_2509).to(torch.bfloat16)
    size_as_quantized(parts.transformer, FP8_FAST, FP8_SCOPES["transformer"])  # 1 byte per weight, as fp8
    parts.text_encoder = empty_text_encoder(arch).to(torch.bfloat16)
    parts.vae = empty_vae(arch, 3).to(torch.bfloat16)
    return measure(parts)


def estimates(steps: int) -> list[dict]:
    sizes = fp8_sizes()
    job = JobShape("edit", 1024, 1024, references=1, steps=steps)
    rows = []
    for name, (budget, capability, bf16, fp8, int8, link) in CARDS.items():
        fast = (("fp8", fp8 * T * REACHED["fp8"]),) if fp8 else ()
        fast += (("int8", int8 * T * REACHED["int8"]),)
        speed = DeviceSpeed(name, bf16 * T * REACHED["bf16"], link * 1e9, fast)
        gib = None if budget == "unlimited" else int({"8 GB": 7.0, "12 GB": 10.75, "24 GB": 22.0}[budget] * 2**30)
        plan = plan_run(
            sizes, job, OffloadSettings(vram_budget=budget), VaeSettings(), [Gpu("cuda:0", gib, capability)]
        )
        row = {"card": name, "preset": budget, "resident": len(plan.resident_blocks)}
        for rung in ("exact", "fast", "fastest"):
            arithmetic = choose_arithmetic(rung, FP8, [capability])
            row[rung] = estimate_step(sizes, job, replace(plan, arithmetic=arithmetic), speed, FP8).seconds
            row[f"{rung}_kind"] = arithmetic.kind
        int8_fast = replace(choose_arithmetic("fast", "int8", [capability]))
        row["fast_int8"] = estimate_step(sizes, job, replace(plan, arithmetic=int8_fast), speed, "int8").seconds
        rows.append(row)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    print(
        f"| card | preset plan | exact s/step | fast s/step | fast with int8 weights | fastest ({args.steps} steps) |"
    )
    print("|---|---|---|---|---|---|")
    for r in estimates(args.steps):
        print(
            f"| {r['card']} | {r['preset']} ({r['resident']} of 60 blocks resident) | {r['exact']:.2f} "
            f"| {r['fast']:.2f} ({r['fast_kind']}) | {r['fast_int8']:.2f} | {r['fastest']:.2f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
