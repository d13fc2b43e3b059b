"""Attention kernels on this GPU at the jobs' joint lengths: seconds per call and deviation against a
float64 reference, for every SDPA backend and comfy-kitchen's INT8 attention where it is installed.

    python bench/attention_kernels.py [--out FILE.json] [--tokens 8448 8256]

One call is one prompt of one block: (1, tokens, 24 heads, 128) bf16 in the engine's layout, as
``TransformerEngine._attention`` passes it. Two input kinds: plain Gaussian, and "peaky" (sharper
softmax, a few large key channels: the outliers that make 8-bit attention hard).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from optim.execution.attention_choice import HEAD_DIM, HEADS, attention_kernels  # noqa: E402
from optim.execution.device_speed import best_seconds  # noqa: E402

CHECKED_HEADS = 4  # the float64 reference is computed on these heads only (time)


def _inputs(tokens: int, kind: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    shape = (1, tokens, HEADS, HEAD_DIM)
    q, k, v = (torch.randn(shape, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    if kind == "peaky":
        q, k = q * 2.0, k * 2.0
        k[..., :4] += 6.0  # shared large channels, as trained keys often have
    return q, k, v


def _reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    out = []
    for h in range(CHECKED_HEADS):
        qh, kh, vh = (t[0, :, h].double() for t in (q, k, v))
        weights = torch.softmax(qh @ kh.t() / HEAD_DIM**0.5, dim=-1)
        out.append(weights @ vh)
    return torch.stack(out, dim=1)


def measure(token_counts: list[int]) -> dict:
    torch.manual_seed(0)
    device = torch.device("cuda")
    results = {"gpu": torch.cuda.get_device_name(), "capability": torch.cuda.get_device_capability(), "rows": []}
    kernels = attention_kernels(device, lossy=True)
    results["kernels"] = sorted(kernels)
    for tokens in token_counts:
        for kind in ("gaussian", "peaky"):
            q, k, v = _inputs(tokens, kind)
            exact = _reference(q, k, v)
            for name, kernel in kernels.items():
                try:
                    out = kernel(q, k, v)
                    seconds = best_seconds(lambda kernel=kernel, q=q, k=k, v=v: kernel(q, k, v), device, 10)
                except Exception as error:  # noqa: BLE001 - a kernel this GPU lacks is a row, not a crash
                    results["rows"].append({"tokens": tokens, "inputs": kind, "kernel": name, "error": str(error)})
                    continue
                got = out[0, :, :CHECKED_HEADS].double()
                flops = 4 * tokens * tokens * HEAD_DIM * HEADS
                results["rows"].append(
                    {
                        "tokens": tokens,
                        "inputs": kind,
                        "kernel": name,
                        "ms": seconds * 1e3,
                        "tflops": flops / seconds / 1e12,
                        "rel_l2_vs_float64": float((got - exact).norm() / exact.norm()),
                    }
                )
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--tokens", type=int, nargs="+", default=[8448])
    args = parser.parse_args()
    results = measure(args.tokens)
    from bench.report import print_and_write

    print_and_write(results, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
