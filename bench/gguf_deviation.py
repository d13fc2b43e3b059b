"""How far GGUF weights move the transformer's output from bf16: real quantization, real-size architecture.

    python bench/gguf_deviation.py --types Q8_0,Q5_0,Q4_0 --out F.json      (GPU; ~3 min at real size)
    python bench/gguf_deviation.py --arch qwenfit-tiny --device cpu           (a quick check of the script)

The benchmark's real-size Edit-2509 transformer (random weights, bench/realsize.py's seeds) runs one forward
of an Edit 1024 job (one reference: 2 x 4096 image tokens, 200 text tokens, t = 0.5) in bf16: the reference.
Then every block Linear's weight is quantized by the ``gguf`` library itself (its numpy quantizers, as
ComfyUI-GGUF's converter calls them) and expanded by the pack's GGUF expansion, and the same forward runs
again; so does the benchmark's fp8 scaled layout (per-tensor absmax e4m3) for comparison. Reported: ||a-b||/||b||
and max |a-b| of the forward's output against bf16. K-quants are not measured: the gguf library has no
K-quant quantizer (llama.cpp's C quantizer is not available here), so real Q4_K/Q5_K/Q6_K files' deviation is
unknown here. One forward, not a whole run: the speed ladder's figures are final latents after 6 steps.
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def _inputs(transformer, device, tokens_side: int, text_tokens: int):
    import torch

    cfg = transformer.config
    generator = torch.Generator().manual_seed(7)
    image_tokens = tokens_side * tokens_side
    hidden = torch.randn(1, 2 * image_tokens, cfg.in_channels, generator=generator)
    text = torch.randn(1, text_tokens, cfg.joint_attention_dim, generator=generator) * 0.1
    shapes = [[(1, tokens_side, tokens_side), (1, tokens_side, tokens_side)]]
    dtype = torch.bfloat16
    return hidden.to(device, dtype), text.to(device, dtype), shapes


def _forward(transformer, hidden, text, shapes):
    import torch

    timestep = torch.tensor([0.5], device=hidden.device, dtype=hidden.dtype)
    with torch.inference_mode():
        out = transformer(
            hidden_states=hidden, encoder_hidden_states=text, timestep=timestep, img_shapes=shapes, return_dict=False
        )[0]
    return out.float()


def _gguf_weight(weight, type_name: str):
    """``weight`` quantized by the gguf library, expanded by the pack, in the weight's dtype and device."""
    import gguf
    import torch
    from gguf import quants

    from optim.quant.gguf import _expand

    values = weight.float().cpu().numpy()
    blocks = quants.quantize(values, gguf.GGMLQuantizationType[type_name])
    stored = torch.from_numpy(blocks.view("uint8").copy()).to(weight.device)
    return _expand(type_name, stored, weight.dtype).reshape(weight.shape)


def _fp8_weight(weight):
    from optim.files.fp8_layouts import quantize_absmax

    data, scale = quantize_absmax(weight)
    return (data.float() * scale).to(weight.dtype)


def measure(arch: str, device: str, types: list[str], tokens_side: int, text_tokens: int) -> dict:
    import torch

    from bench.realsize import materialise
    from optim.qwen.architectures import Architecture, empty_transformer
    from optim.qwen.variants import Variant

    start = time.perf_counter()
    transformer = materialise(
        empty_transformer(Architecture(arch), Variant.EDIT_2509), device, torch.bfloat16, "transformer"
    )
    transformer.eval()
    hidden, text, shapes = _inputs(transformer, device, tokens_side, text_tokens)
    reference = _forward(transformer, hidden, text, shapes)
    linears = [
        m
        for m in transformer.transformer_blocks.modules()
        if isinstance(m, torch.nn.Linear) and m.in_features % 32 == 0
    ]
    originals = [m.weight.detach().to("cpu", copy=True) for m in linears]
    rows: dict = {}
    kinds = [*types, "fp8 scaled (per-tensor e4m3)"]
    for kind in kinds:
        begin = time.perf_counter()

        def convert(index: int, kind=kind):
            weight = originals[index].to(device)
            return _fp8_weight(weight) if kind.startswith("fp8") else _gguf_weight(weight, kind)

        # numpy's quantizers release the GIL for most of their work: layers quantize side by side.
        with ThreadPoolExecutor(max_workers=8) as pool:
            for layer, value in zip(linears, pool.map(convert, range(len(linears))), strict=True):
                with torch.no_grad():
                    layer.weight.copy_(value)
        out = _forward(transformer, hidden, text, shapes)
        difference = out - reference
        rows[kind] = {
            "rel_l2": float(difference.norm() / reference.norm()),
            "max_abs": float(difference.abs().max()),
            "seconds": time.perf_counter() - begin,
        }
        print(kind, rows[kind], flush=True)
        with torch.no_grad():
            for layer, weight in zip(linears, originals, strict=True):
                layer.weight.copy_(weight.to(device))
    return {
        "arch": arch,
        "device": torch.cuda.get_device_name() if device == "cuda" else device,
        "job": f"Edit forward, 2 x {tokens_side * tokens_side} image tokens, {text_tokens} text tokens, t=0.5",
        "quantized_layers": len(linears),
        "rows": rows,
        "seconds": time.perf_counter() - start,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="qwen-image")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--types", default="Q8_0,Q5_1,Q5_0,Q4_1,Q4_0")
    parser.add_argument("--tokens-side", type=int, default=64, help="latent tokens per side (64: a 1024 image)")
    parser.add_argument("--text-tokens", type=int, default=200)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    side = args.tokens_side if args.arch == "qwen-image" else min(args.tokens_side, 4)
    result = measure(args.arch, args.device, args.types.split(","), side, args.text_tokens)
    from bench.report import print_and_write

    print_and_write(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
