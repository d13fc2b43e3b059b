"""A real-size Comfy-Org int8 transformer (ConvRot or plain) from the benchmark's fp8 split file.

    python bench/comfy_quant_real.py --models /dev/shm/qwenfit-native --format int8_convrot [--device cuda]

Reads ``diffusion_models/qwen_image_edit_2509_fp8_e4m3fn.safetensors`` (``bench/comfy_native.py write``, the
"scaled" layout: ``model.diffusion_model.`` keys, one ``scale_weight`` per tensor) and writes
``diffusion_models/qwen_image_edit_2509_<format>.safetensors`` beside it in Comfy-Org's layout, as
``tools/comfy_quant_files.py`` writes the tiny files: per quantized Linear an int8 ``weight``, a float32
``weight_scale`` per row and a ``comfy_quant`` note (``int8_tensorwise``, with ``convrot`` and its group for
int8_convrot: 256, or the largest power of 4 dividing a narrower input). Quantized: every 2-D weight of the
transformer blocks but ``transformer_blocks.0.img_mod.1``; the embedders (``img_in``, ``txt_in``,
``time_text_embed``) and the output layers (``norm_out``, ``proj_out``) stay bf16, as the Qwen filter of
silveroxides/convert_to_quant (the community converter for these files) leaves them. Comfy-Org's own exclusion
list for its Qwen int8 builds is not published; this one follows the converter. Other tensors: bf16 (fp8 ones
expanded with their scale first), non-float ones as stored.

The weights are the fp8 file's (random on the benchmark), quantized as comfy-kitchen's portable quantizer does,
on ``--device`` (cuda when there is one) one tensor at a time; the header is written first from the source's
shapes, then each tensor's bytes, so host memory holds one tensor (the 20 GB output is never in RAM).
"""

from __future__ import annotations

import argparse
import json
import math
import struct
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

SOURCE = "diffusion_models/qwen_image_edit_2509_fp8_e4m3fn.safetensors"
PREFIX = "model.diffusion_model."
FORMATS = ("int8_convrot", "int8")
KEPT_FIRST_LAYER = "transformer_blocks.0.img_mod.1"  # convert_to_quant's Qwen filter keeps it bf16
_DTYPE_NAMES = {
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "BF16": torch.bfloat16,
    "F32": torch.float32,
    "I32": torch.int32,
    "I64": torch.int64,
}
_NAMES = {dtype: name for name, dtype in _DTYPE_NAMES.items()}


def quantized(key: str) -> bool:
    """The 2-D weights written int8 (``key`` without the ``model.diffusion_model.`` prefix)."""
    layer = key.removesuffix(".weight")
    return key.startswith("transformer_blocks.") and key.endswith(".weight") and layer != KEPT_FIRST_LAYER


def convrot_group(in_features: int) -> int:
    """ComfyUI's default group (256), or the largest power of 4 dividing a narrower input (tiny models)."""
    group = 256
    while group > 4 and in_features % group:
        group //= 4
    return group


def _out_name(fmt: str) -> str:
    return f"diffusion_models/qwen_image_edit_2509_{fmt}.safetensors"


def _plan(source, fmt: str) -> list[tuple[str, str, object, tuple[int, ...], str]]:
    """(output key, what, argument, shape, safetensors dtype) per output tensor, in file order: what is "int8"
    (argument: the source key and the group), "scale" (of the int8 weight before it), "note" (argument: the
    note's bytes) or "copy" (argument: the source key; floats as bf16, other tensors as stored)."""
    from tools.comfy_quant_files import note

    entries = []
    for file_key in sorted(source.file_keys()):
        if not file_key.startswith(PREFIX) or file_key.endswith("scale_weight") or file_key.endswith("scaled_fp8"):
            continue
        key = file_key.removeprefix(PREFIX)
        shape = tuple(source.shape(file_key))
        if quantized(key) and len(shape) == 2:
            layer = PREFIX + key.removesuffix(".weight")
            group = convrot_group(shape[1]) if fmt == "int8_convrot" else 0
            conf: dict = {"format": "int8_tensorwise"}
            if group:
                conf.update({"convrot": True, "convrot_groupsize": group})
            note_bytes = note(conf)
            entries.append((f"{layer}.weight", "int8", (file_key, group), shape, "I8"))
            entries.append((f"{layer}.weight_scale", "scale", None, (shape[0], 1), "F32"))
            entries.append((f"{layer}.comfy_quant", "note", note_bytes, tuple(note_bytes.shape), "U8"))
        else:
            file, name = source.locate(file_key)
            stored = file.tensors[name].dtype
            dtype = "BF16" if stored.is_floating_point else _NAMES[stored]
            entries.append((file_key, "copy", file_key, shape, dtype))
    return entries


def convert(models: Path, fmt: str, device: str) -> Path:
    from optim.files.fp8_layouts import Fp8Weight
    from optim.files.weight_source import WeightSource
    from tools.comfy_quant_files import quantize_int8

    if fmt not in FORMATS:
        raise SystemExit(f"--format: one of {', '.join(FORMATS)}")
    start = time.perf_counter()
    source = WeightSource([models / SOURCE])
    entries = _plan(source, fmt)
    header: dict = {"__metadata__": {"format": "pt", "written_by": "bench/comfy_quant_real.py"}}
    offset = 0
    for key, _, _, shape, dtype in entries:
        nbytes = _DTYPE_NAMES[dtype].itemsize * math.prod(shape)
        header[key] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    out = models / _out_name(fmt)
    tmp = out.with_suffix(".tmp")
    counts = {"int8": 0, "bf16": 0}
    pending_scale: torch.Tensor | None = None
    with tmp.open("wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for key, what, arg, shape, dtype in entries:
            if what == "int8":
                file_key, group = arg
                if source.stores_fp8(file_key):  # expanded with its scale on the device, as ComfyUI does
                    fp8 = source.read_fp8(file_key)
                    dense = Fp8Weight(fp8.data.to(device), fp8.scale, fp8.layout).dequantize(torch.float32)
                else:
                    dense = source.read(file_key).to(device).float()
                value, pending_scale = quantize_int8(dense, group)
                counts["int8"] += 1
            elif what == "scale":
                value, pending_scale = pending_scale, None
            elif what == "note":
                value = arg
            elif source.stores_fp8(arg):
                value = source.read_fp8(arg).dequantize(torch.float32).to(torch.bfloat16)
                counts["bf16"] += 1
            else:
                value = source.read(arg)
                if value.is_floating_point():
                    value = value.to(torch.bfloat16)
                    counts["bf16"] += 1
            value = value.contiguous().cpu()
            assert tuple(value.shape) == shape and _NAMES[value.dtype] == dtype, key
            f.write(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    tmp.replace(out)
    print(
        f"wrote {out} ({out.stat().st_size / 2**30:.2f} GiB: {counts['int8']} int8 {fmt} layers, "
        f"{counts['bf16']} bf16 tensors) on {device} in {time.perf_counter() - start:.0f} s"
    )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, required=True)
    parser.add_argument("--format", default="int8_convrot", choices=FORMATS)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    convert(args.models, args.format, args.device)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
