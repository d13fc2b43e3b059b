"""The fast rung's products on this GPU, one Linear of the real model at a time: seconds against bf16
and deviation against a float64 reference, eager and compiled (activation quantization fused).

    python bench/fast_kernels.py [--out FILE.json]

Shapes: the image stream of Edit 1024 with one reference and batched CFG (2 x 8192 image tokens)
through the attention projection (3072 -> 3072) and the MLP (3072 -> 12288 -> 3072).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from optim.quant.low_precision import fp8_linear, int8_linear, quantize_rows_fp8, quantize_rows_int8  # noqa: E402

SHAPES = {"attention projection": (3072, 3072), "MLP up": (12288, 3072), "MLP down": (3072, 12288)}
TOKENS = 2 * 8192


def _seconds(fn, repeats: int = 20) -> float:
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def _fp8_without_fast_accumulation(x: torch.Tensor, w: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    xq, xs = quantize_rows_fp8(x)
    return torch._scaled_mm(xq, w.t(), scale_a=xs, scale_b=s, out_dtype=x.dtype, use_fast_accum=False)


def measure() -> dict:
    torch.manual_seed(0)
    results = {"gpu": torch.cuda.get_device_name(), "capability": torch.cuda.get_device_capability(), "rows": []}
    for name, (out_f, in_f) in SHAPES.items():
        x = torch.randn(TOKENS, in_f, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(out_f, in_f, device="cuda", dtype=torch.bfloat16) / in_f**0.5
        exact = x.double() @ w.double().t()
        w8, s8 = quantize_rows_fp8(w)
        wi, si = quantize_rows_int8(w)
        s8, si = s8.reshape(1, -1), si.reshape(1, -1)
        variants = {
            "bf16": lambda x=x, w=w: torch.nn.functional.linear(x, w),
            "fp8 W8A8": lambda x=x, w=w8, s=s8: fp8_linear(x, w, s, None),
            "int8 W8A8": lambda x=x, w=wi, s=si: int8_linear(x, w, s, None),
        }
        variants["fp8 W8A8 compiled"] = torch.compile(variants["fp8 W8A8"])
        variants["fp8 W8A8 compiled, exact accumulation"] = torch.compile(
            lambda x=x, w=w8, s=s8: _fp8_without_fast_accumulation(x, w, s)
        )
        variants["int8 W8A8 compiled"] = torch.compile(variants["int8 W8A8"])
        for label, fn in variants.items():
            out = fn().double()
            results["rows"].append(
                {
                    "layer": name,
                    "product": label,
                    "seconds": _seconds(fn),
                    "rel_l2_vs_float64": float((out - exact).norm() / exact.norm()),
                }
            )
    base = {r["layer"]: r["seconds"] for r in results["rows"] if r["product"] == "bf16"}
    for r in results["rows"]:
        r["x_bf16"] = r["seconds"] / base[r["layer"]]
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    results = measure()
    for r in results["rows"]:
        print(
            f"{r['layer']:<22} {r['product']:<20} {r['seconds'] * 1e3:7.3f} ms  x{r['x_bf16']:.2f}  rel {r['rel_l2_vs_float64']:.2e}"
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
