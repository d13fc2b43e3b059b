"""A real-size GGUF transformer, as ComfyUI-GGUF's converter lays it out, from the benchmark's fp8 split file.

    python bench/gguf_real.py --models /dev/shm/qwenfit-native --type Q4_K

Reads ``diffusion_models/qwen_image_edit_2509_fp8_e4m3fn.safetensors`` (``bench/comfy_native.py write``) and
writes ``diffusion_models/qwen_image_edit_2509_<type>.gguf`` beside it: every 2-D weight whose rows are a whole
number of the type's blocks as that type, other 2-D weights float16, 1-D ones float32 (the converter's rules).
The quantized weights (K-quants, Q8_0) are random blocks with small float16 scales (``tools/gguf_files.py``), not a
quantization of the fp8 weights: the gguf library has no K-quant quantizer, and these rows measure speed and
memory, not fidelity. Deviation against bf16 is therefore not measured here.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

SOURCE = "diffusion_models/qwen_image_edit_2509_fp8_e4m3fn.safetensors"


def convert(models: Path, type_name: str) -> Path:
    import gguf
    import torch

    from optim.files.weight_source import WeightSource
    from tools.gguf_files import RANDOM_BLOCK_SCALE_OFFSETS, gguf_type_for, kquant_blocks

    if type_name not in RANDOM_BLOCK_SCALE_OFFSETS:
        raise SystemExit(f"--type: one of {', '.join(RANDOM_BLOCK_SCALE_OFFSETS)} (random blocks; no numpy quantizing)")

    start = time.perf_counter()
    source = WeightSource([models / SOURCE])
    prefix = "model.diffusion_model."
    rng = np.random.default_rng(0)
    out = models / "diffusion_models" / f"qwen_image_edit_2509_{type_name}.gguf"
    writer = gguf.GGUFWriter(str(out), arch="qwen_image")
    counts: dict[str, int] = {}
    for file_key in sorted(source.file_keys()):
        if not file_key.startswith(prefix) or file_key.endswith("scale_weight") or file_key.endswith("scaled_fp8"):
            continue
        key = file_key.removeprefix(prefix)
        shape = source.shape(file_key)
        kind = gguf_type_for(tuple(shape), (type_name,))
        counts[kind] = counts.get(kind, 0) + 1
        if kind in ("F32", "F16"):
            value = (
                source.read_fp8(file_key).dequantize(torch.float32)
                if source.stores_fp8(file_key)
                else source.read(file_key)
            )
            data = value.float().numpy().astype(np.float32 if kind == "F32" else np.float16)
            writer.add_tensor(key, data)
        else:
            blocks = kquant_blocks(*shape, kind, rng)
            writer.add_tensor(key, blocks, raw_dtype=gguf.GGMLQuantizationType[kind])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    print(f"wrote {out} ({out.stat().st_size / 2**30:.2f} GiB, {counts}) in {time.perf_counter() - start:.0f} s")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, required=True)
    parser.add_argument("--type", default="Q4_K")
    args = parser.parse_args()
    convert(args.models, args.type)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
