"""Write GGUF files as ComfyUI-GGUF's tools do (arch ``qwen_image``, the model's own tensor names), offline.

The ``gguf`` library writes the file and quantizes the types it has numpy quantizers for (Q8_0, Q5_0/1,
Q4_0/1, BF16). It has none for the K-quants (Q6_K, Q5_K, Q4_K, Q3_K, Q2_K): their blocks are random bytes
with every scale set to a small finite float16, so they decode to finite weights of a plausible size;
what the tests compare is the pack's expansion against the library's own numpy dequantization of the very
same bytes, and that comparison does not care how the bytes were chosen.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# Where each K-quant block keeps its float16 scales (GGML's block layouts; gguf's quants.py splits them so).
KQUANT_SCALE_OFFSETS = {"Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}


# Where a Q8_0 block keeps its one float16 scale: random blocks of it too (bench/gguf_real.py), never for the
# tests' files, which quantize Q8_0 with the gguf library.
RANDOM_BLOCK_SCALE_OFFSETS = {**KQUANT_SCALE_OFFSETS, "Q8_0": (0,)}


def kquant_blocks(rows: int, columns: int, type_name: str, rng: np.random.Generator) -> np.ndarray:
    """Random blocks of a ``rows`` x ``columns`` weight in a K-quant type (or Q8_0), small float16 scales, as
    the uint8 array the file stores."""
    import gguf

    block_size, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[type_name]]
    blocks = rng.integers(0, 256, size=(rows * columns // block_size, type_size), dtype=np.uint8)
    scale = rng.uniform(0.5, 1.5, size=(blocks.shape[0],)).astype(np.float16) * np.float16(0.0001)
    for offset in RANDOM_BLOCK_SCALE_OFFSETS[type_name]:
        blocks[:, offset : offset + 2] = scale.view(np.uint8).reshape(-1, 2)
    return blocks.reshape(rows, columns // block_size * type_size)


def stored_form(values: np.ndarray, type_name: str, rng: np.random.Generator) -> np.ndarray:
    """What a GGUF file stores for float32 ``values`` in ``type_name``."""
    import gguf
    from gguf import quants

    if type_name == "F32":
        return values.astype(np.float32)
    if type_name == "F16":
        return values.astype(np.float16)
    if type_name in KQUANT_SCALE_OFFSETS:
        return kquant_blocks(*values.shape, type_name, rng)
    return quants.quantize(values, gguf.GGMLQuantizationType[type_name])


def retyped_gguf(source: Path, path: Path, type_name: str) -> None:
    """Copy the GGUF file ``source`` to ``path`` with its first quantized tensor stored as zero blocks of
    ``type_name`` instead (a file of a type the pack does not read, otherwise whole)."""
    import gguf

    reader = gguf.GGUFReader(source, "r")
    arch = reader.get_field("general.architecture")
    writer = gguf.GGUFWriter(str(path), arch=str(arch.contents()) if arch is not None else "qwen_image")
    retyped = False
    for t in reader.tensors:
        kind, data = gguf.GGMLQuantizationType(t.tensor_type), np.asarray(t.data)
        if not retyped and gguf.GGML_QUANT_SIZES[kind][0] > 1:
            kind = gguf.GGMLQuantizationType[type_name]
            block_size, type_size = gguf.GGML_QUANT_SIZES[kind]
            columns = int(t.shape[0])  # GGML lists the innermost dimension first
            data, retyped = np.zeros((data.shape[0], columns // block_size * type_size), np.uint8), True
        writer.add_tensor(t.name, data, raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    del reader


def write_gguf(path: Path, tensors: dict[str, tuple[str, np.ndarray]], arch: str = "qwen_image", seed: int = 0):
    """Write ``name -> (GGML type name, float32 values)`` to ``path``; returns ``name -> stored array``."""
    import gguf

    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(str(path), arch=arch)
    stored = {}
    for name, (type_name, values) in tensors.items():
        data = stored_form(values, type_name, rng)
        kind = gguf.GGMLQuantizationType[type_name]
        if type_name in ("F32", "F16"):
            writer.add_tensor(name, data)  # BF16 below: the library writes it from raw bytes
        else:
            writer.add_tensor(name, data, raw_dtype=kind)
        stored[name] = data
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return stored


# The tiny models' GGUF files: every quantized type on Edit-2509, one file each, and whole BF16 / F16 files
# (as unsloth ships them); on Edit-2511 a Q4_K_M-like mix, on Layered a Q8_0 file, and on both one file holding
# every type (the least used type that fits, tensor by tensor) and one file per K type. Tensors the type cannot hold (rows not a
# multiple of its block) stay float16, 1-D ones float32, as ComfyUI-GGUF's converter leaves them.
ALL_TYPES = ("Q8_0", "Q6_K", "Q5_K", "Q5_1", "Q5_0", "Q4_K", "Q4_1", "Q4_0", "Q3_K", "Q2_K", "BF16", "F16")
EVERY_TYPE = "every_type"  # one type after another, over the 2-D tensors in order
# The tiny transformers have one weight whose rows hold a K-quant's 256-weight blocks: one file per K type.
K_TYPES = ("Q6_K", "Q5_K", "Q4_K", "Q3_K", "Q2_K")
TINY_GGUF = {
    "edit-2509": [(t, (t,)) for t in ALL_TYPES],
    "edit-2511": [("Q4_K_M", ("Q4_K", "Q8_0")), (EVERY_TYPE, ALL_TYPES), *((t, (t, "Q8_0")) for t in K_TYPES)],
    "layered": [("Q8_0", ("Q8_0",)), (EVERY_TYPE, ALL_TYPES), *((t, (t, "Q8_0")) for t in K_TYPES)],
}


def gguf_type_for(shape: tuple[int, ...], preferred: tuple[str, ...]) -> str:
    """The first of ``preferred`` that can hold a tensor of ``shape`` (float16 / float32 otherwise)."""
    import gguf

    if len(shape) < 2:
        return "F32"
    for type_name in preferred:
        block_size, _ = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[type_name]]
        if shape[-1] % block_size == 0:
            return type_name
    return "F16"


def write_tiny_transformer_ggufs(tensors: dict, variant: str, out_dir: Path) -> list[Path]:
    """The GGUF files of one tiny transformer (``name -> torch tensor``, original key names) in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for label, preferred in TINY_GGUF[variant]:
        path = out_dir / f"qwenfit_tiny_{variant.replace('-', '_')}_{label}.gguf"
        plan = {}
        used = dict.fromkeys(preferred, 0)
        for name, tensor in tensors.items():
            if tensor.numel() == 0:  # a marker tensor (the 2511 one): the file name says 2511
                continue
            values = tensor.float().numpy()
            if label == EVERY_TYPE and values.ndim == 2:  # the least used type that holds these rows
                fitting = [t for t in preferred if gguf_type_for(tuple(values.shape), (t,)) == t]
                kind = min(fitting, key=lambda t: used[t]) if fitting else "F16"
                used[kind] = used.get(kind, 0) + 1
                plan[name] = (kind, values)
            else:
                plan[name] = (gguf_type_for(tuple(values.shape), preferred), values)
        tmp = path.with_suffix(".tmp")
        write_gguf(tmp, plan)
        tmp.replace(path)
        written.append(path)
    return written
