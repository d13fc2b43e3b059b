"""ComfyUI-GGUF's Qwen2.5-VL text encoders: listed on purpose, refused with the fix.

ComfyUI-GGUF users keep a llama.cpp ``qwen2vl`` GGUF (``Qwen2.5-VL-7B-Instruct-Q4_K_M.gguf``) in text_encoders/ with
its vision projector (``Qwen2.5-VL-7B-Instruct-mmproj-F16.gguf``) beside it; ComfyUI-GGUF pairs them by name (a
``.gguf`` holding "mmproj" and the text encoder's name without its quantization suffix) and rebuilds the vision tower
from the projector. QwenFit does not read them yet (it would need llama.cpp's names mapped back to Qwen2.5-VL's and
the vision tower rebuilt from the mmproj file), so choosing one says so and names the file to use instead; a text
encoder whose projector is missing gets that said first, since it is broken for Edit in any program.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import QwenFitError

GGUF_SUFFIX = ".gguf"
FP8_TEXT_ENCODER = "qwen_2.5_vl_7b_fp8_scaled.safetensors"
BF16_TEXT_ENCODER = "qwen_2.5_vl_7b.safetensors"
_WHERE = "Comfy-Org/Qwen-Image_ComfyUI, split_files/text_encoders"
# A quantization or float-type suffix at the end of a GGUF file's stem: "-Q4_K_M", "_q8_0", "-IQ4_XS", "-UD-Q4_K_XL",
# "-F16", "-BF16".
_QUANT_SUFFIX = re.compile(r"[-_.](?:ud-)?(?:i?q\d[a-z0-9_]*|bf16|f16|f32)$", re.IGNORECASE)


def is_gguf(name: str) -> bool:
    return name.lower().endswith(GGUF_SUFFIX)


def is_mmproj(name: str) -> bool:
    """A llama.cpp vision projector (not a text encoder by itself)."""
    return is_gguf(name) and "mmproj" in Path(name).name.lower()


def model_stem(text_encoder: Path) -> str:
    """The text encoder's name without its quantization suffix ("Qwen2.5-VL-7B-Instruct")."""
    return _QUANT_SUFFIX.sub("", text_encoder.stem)


def find_mmproj(text_encoder: Path) -> Path | None:
    """The vision projector beside ``text_encoder``, paired by name as ComfyUI-GGUF pairs them (None: none there)."""
    stem = model_stem(text_encoder).lower()
    folder = text_encoder.parent
    candidates = sorted(p for p in folder.iterdir() if is_mmproj(p.name) and stem in p.name.lower())
    return candidates[0] if candidates else None


def refuse_gguf_text_encoder(path: Path) -> None:
    """Raise the QwenFitError for a GGUF text encoder: its missing projector first, else that QwenFit needs a
    safetensors one."""
    use = (
        f"pick {FP8_TEXT_ENCODER} ({_WHERE}; or {BF16_TEXT_ENCODER}) as text_encoder, or set it to auto, "
        "which never picks a GGUF file"
    )
    if find_mmproj(path) is None:
        wanted = f"{model_stem(path)}-mmproj-F16.gguf"
        raise QwenFitError(
            f"{path.name} is a GGUF text encoder whose vision projector is missing: no mmproj file for it ({wanted}, "
            f"or any .gguf in {path.parent.name}/ whose name holds 'mmproj' and '{model_stem(path)}') is beside it, "
            "and without it Qwen-Image-Edit cannot see its reference images. QwenFit does not read GGUF text encoders "
            f"in any case: {use}."
        )
    raise QwenFitError(
        f"{path.name} is a GGUF text encoder (llama.cpp's qwen2vl, with its vision projector "
        f"{find_mmproj(path).name}); QwenFit reads GGUF transformers but not GGUF text encoders yet: {use}."
    )
