"""The two layouts users have (a diffusers folder; ComfyUI's split files) and what is in them.

``describe_split_files`` and ``describe_folder`` read only headers and configs: it tells the variant, the architecture and
where each tensor comes from, and refuses wrong or mismatched files before anything loads. ``inspect_folder`` checks
that a diffusers folder is complete and safetensors-only before ``describe_folder`` reads it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import QwenFitError
from ..qwen.architectures import Architecture, all_architectures
from ..qwen.variants import ModelIdentity, Variant, detect_variant, is_firered_name, resolve_model
from .families import describe_family, find_prefix
from .fp8_layouts import is_scale_key
from .gguf_file import GgufFile
from .gguf_text_encoder import is_gguf, refuse_gguf_text_encoder
from .key_maps import TRANSFORMER_PREFIXES, text_encoder_to_comfy, vae_to_diffusers
from .safetensors_file import PICKLE_SUFFIXES
from .weight_source import WeightSource

MARKER_2511 = "__index_timestep_zero__"
LAYERED_KEY = "time_text_embed.addition_t_embedding.weight"
TOKENIZER_FILES = ("vocab.json", "merges.txt")
_REQUIRED_PARTS = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler", "processor")
_WEIGHT_PARTS = ("transformer", "vae", "text_encoder")
# VAE input channels per variant: the Layered VAE works on RGBA.
_VAE_CHANNELS = {Variant.EDIT_2509: 3, Variant.EDIT_2511: 3, Variant.LAYERED: 4}


@dataclass(frozen=True)
class DiffusersFolder:
    """A diffusers-format folder (model_index.json and component folders)."""

    path: Path

    @property
    def name(self) -> str:
        return self.path.name


@dataclass(frozen=True)
class SplitFiles:
    """ComfyUI's split files: one transformer, one text encoder, one VAE, plus a tokenizer folder."""

    transformer: Path
    text_encoder: Path
    vae: Path
    tokenizer: Path

    @property
    def name(self) -> str:
        return self.transformer.name


PipelineSource = DiffusersFolder | SplitFiles


@dataclass
class SourceDescription:
    """What is needed to build a pipeline: variant, weight sources and configs per component."""

    variant: Variant
    architecture: Architecture | None  # None for a diffusers folder (its own configs)
    transformer: WeightSource
    text_encoder: WeightSource
    vae: WeightSource
    vae_channels: int
    tokenizer_dir: Path
    folder: Path | None = None
    model: ModelIdentity | None = None  # what the reports call it (None: the variant's own name)

    @property
    def identity(self) -> ModelIdentity:
        return self.model or ModelIdentity(self.variant)

    def folder_config(self, part: str) -> dict[str, Any] | None:
        if self.folder is None:
            return None
        return json.loads((self.folder / part / "config.json").read_text())


def _shards(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.safetensors"))


# ---- transformer ----------------------------------------------------------------------------


def _transformer_source(path: Path) -> tuple[WeightSource, Variant | None]:
    """Open a transformer file; returns the source and the variant its keys prove (None: no proof)."""
    source = WeightSource([path])
    for file in source.files:
        if isinstance(file, GgufFile):
            file.check_architecture()
    keys = source.file_keys()
    prefix = find_prefix(keys, "txt_norm.weight", ("",) + TRANSFORMER_PREFIXES)
    if prefix is None:
        raise QwenFitError(
            f"{path.name} is {describe_family(keys)}, not a Qwen-Image transformer. Pick a qwen_image_edit_2509/2511 "
            "or qwen_image_layered file from models/diffusion_models."
        )
    source.to_file_key = lambda k, p=prefix: p + k
    if prefix + LAYERED_KEY in keys:
        return source, Variant.LAYERED
    if prefix + MARKER_2511 in keys or MARKER_2511 in keys:
        return source, Variant.EDIT_2511
    return source, None


def variant_from_name(name: str) -> Variant:
    """The variant a file name suggests when the weights carry no marker (2509 otherwise)."""
    lowered = name.lower()
    if "layered" in lowered:
        return Variant.LAYERED
    if "2511" in lowered:
        return Variant.EDIT_2511
    return Variant.EDIT_2509


def _match_transformer(source: WeightSource, name: str) -> Architecture:
    keys = source.file_keys()
    for arch in all_architectures():
        cfg = arch.config("transformer")
        inner = cfg["num_attention_heads"] * cfg["attention_head_dim"]
        blocks = sum(1 for k in keys if k.endswith("attn.to_q.weight") and "transformer_blocks." in k)
        if (
            source.has("img_in.weight")
            and source.shape("img_in.weight") == (inner, cfg["in_channels"])
            and source.shape("txt_in.weight") == (inner, cfg["joint_attention_dim"])
            and blocks == cfg["num_layers"]
        ):
            return arch
    raise QwenFitError(
        f"{name} is a Qwen-Image transformer of an unknown size (img_in "
        f"{source.shape('img_in.weight')}); QwenFit knows the 20B release only."
    )


# ---- text encoder ---------------------------------------------------------------------------


def _text_encoder_source(path: Path) -> WeightSource:
    if is_gguf(path.name):
        refuse_gguf_text_encoder(path)
    source = WeightSource([path])
    keys = source.file_keys()
    if "model.language_model.layers.0.self_attn.k_proj.bias" in keys:
        return source  # transformers' own names
    if "model.layers.0.self_attn.k_proj.bias" in keys:
        source.to_file_key = text_encoder_to_comfy
        return source
    raise QwenFitError(
        f"{path.name} is {describe_family(keys)}, not the Qwen2.5-VL text encoder. Pick qwen_2.5_vl_7b "
        "(or its fp8_scaled version) from models/text_encoders."
    )


def _match_text_encoder(source: WeightSource, name: str) -> Architecture:
    for arch in all_architectures():
        text = arch.config("text_encoder")["text_config"]
        embed = source.shape("model.language_model.embed_tokens.weight")
        layers = sum(1 for k in source.file_keys() if k.endswith("self_attn.k_proj.bias") and "visual" not in k)
        if embed == (text["vocab_size"], text["hidden_size"]) and layers == text["num_hidden_layers"]:
            return arch
    raise QwenFitError(f"{name} is a Qwen2.5 text encoder of another size; Qwen-Image needs Qwen2.5-VL-7B.")


# ---- VAE ------------------------------------------------------------------------------------


def _vae_source(path: Path, arch: Architecture | None) -> tuple[WeightSource, int]:
    source = WeightSource([path])
    keys = source.file_keys()
    if "encoder.conv_in.weight" in keys:  # diffusers layout
        return source, source.shape("encoder.conv_in.weight")[1]
    if "decoder.head.0.gamma" not in keys:
        raise QwenFitError(
            f"{path.name} is {describe_family(keys)}, not the Qwen-Image VAE. Pick qwen_image_vae (Edit) or "
            "qwen_image_layered_vae (Layered) from models/vae."
        )
    cfg = (arch or all_architectures()[0]).config("vae")
    levels = len(cfg["dim_mult"])
    renamed = {vae_to_diffusers(k, cfg["num_res_blocks"], levels): k for k in keys if not is_scale_key(k)}
    source.to_file_key = lambda k: renamed.get(k, k)
    return source, source.shape("encoder.conv_in.weight")[1]


def _check_vae_matches(channels: int, variant: Variant, vae_name: str, transformer_name: str) -> None:
    wanted = 4 if variant is Variant.LAYERED else 3
    if channels == wanted:
        return
    if channels == 4:
        raise QwenFitError(
            f"{vae_name} is a 4-channel (Layered) VAE but {transformer_name} is {variant.value}: pick "
            "qwen_image_vae.safetensors."
        )
    raise QwenFitError(
        f"{vae_name} is a {channels}-channel VAE but {transformer_name} is Qwen-Image-Layered, which needs the "
        "4-channel one: pick qwen_image_layered_vae.safetensors."
    )


def check_tokenizer(folder: Path) -> None:
    missing = [f for f in TOKENIZER_FILES if not (folder / f).is_file()]
    if missing:
        raise QwenFitError(
            f"the Qwen2.5 tokenizer is missing ({', '.join(missing)} not in {folder}). ComfyUI ships it in "
            "comfy/text_encoders/qwen25_tokenizer: update ComfyUI, or copy vocab.json, merges.txt and "
            "tokenizer_config.json from a Qwen-Image diffusers folder's tokenizer/ there."
        )


def describe_split_files(files: SplitFiles, requested_variant: str = "auto") -> SourceDescription:
    """Inspect split files (headers only) and check they belong together."""
    for label, path in (("transformer", files.transformer), ("text encoder", files.text_encoder), ("VAE", files.vae)):
        if not path.is_file():
            raise QwenFitError(
                f"the {label} file {path.name} does not exist any more; refresh (press R) and pick again."
            )
    transformer, proven = _transformer_source(files.transformer)
    name = files.transformer.name
    model = resolve_model(proven, variant_from_name(name), is_firered_name(name), requested_variant, name)
    variant = model.variant
    arch = _match_transformer(transformer, files.transformer.name)
    text_encoder = _text_encoder_source(files.text_encoder)
    te_arch = _match_text_encoder(text_encoder, files.text_encoder.name)
    if te_arch != arch:
        raise QwenFitError(
            f"{files.text_encoder.name} ({te_arch.name}) does not belong with {files.transformer.name} ({arch.name})."
        )
    vae, channels = _vae_source(files.vae, arch)
    _check_vae_matches(channels, variant, files.vae.name, files.transformer.name)
    check_tokenizer(files.tokenizer)
    return SourceDescription(
        variant=variant,
        architecture=arch,
        transformer=transformer,
        text_encoder=text_encoder,
        vae=vae,
        vae_channels=channels,
        tokenizer_dir=files.tokenizer,
        model=model,
    )


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise QwenFitError(f"{what} is missing ({path.name} not found in {path.parent}).") from None
    except (OSError, ValueError) as exc:
        raise QwenFitError(f"{what} could not be read ({path}): {exc}. Re-copy the file.") from None


def inspect_folder(folder: Path) -> tuple[Variant, dict[str, Any]]:
    """Check a diffusers folder is a complete, safetensors-only Qwen-Image pipeline; return its variant."""
    source = f"model folder '{folder.name}'"
    if not folder.is_dir():
        raise QwenFitError(f"{source} does not exist any more; refresh the page (press R) and pick another.")
    model_index = _read_json(folder / "model_index.json", f"{source}: model_index.json")
    missing = [p for p in _REQUIRED_PARTS if not (folder / p).is_dir()]
    if "tokenizer" in missing:
        raise QwenFitError(
            f"{source} has no tokenizer/ folder. Copy the tokenizer folder of the same release "
            "(vocab.json, merges.txt, tokenizer_config.json) into it."
        )
    if missing:
        raise QwenFitError(f"{source} is incomplete: missing {', '.join(missing)}. Re-copy the whole folder.")
    for part in _WEIGHT_PARTS:
        files = [p.name for p in (folder / part).iterdir() if p.is_file()]
        if not any(f.endswith(".safetensors") for f in files):
            pickles = [f for f in files if f.lower().endswith(PICKLE_SUFFIXES)]
            found = f" (found only pickle files {', '.join(pickles)}, which QwenFit never loads)" if pickles else ""
            raise QwenFitError(
                f"{source}/{part} has no .safetensors weights{found}. Use the safetensors release of the model."
            )
    transformer_config = _read_json(folder / "transformer" / "config.json", f"{source}: transformer config")
    variant = detect_variant(model_index, transformer_config, source)
    vae_config = _read_json(folder / "vae" / "config.json", f"{source}: VAE config")
    channels = vae_config.get("input_channels", 3)
    if channels != _VAE_CHANNELS[variant]:
        kind = "4-channel (Layered)" if channels == 4 else f"{channels}-channel"
        raise QwenFitError(
            f"{source}: its VAE is {kind} but its transformer is {variant.value}. Use the VAE of the same "
            "release (qwen_image_layered_vae for Layered, qwen_image_vae for Edit)."
        )
    return variant, model_index


def describe_folder(folder: Path, model_index: dict[str, Any], requested_variant: str) -> SourceDescription:
    """Weight sources of a diffusers folder whose structure was already checked."""
    transformer_config = json.loads((folder / "transformer" / "config.json").read_text())
    source = f"model folder '{folder.name}'"
    detected = detect_variant(model_index, transformer_config, source)
    named = is_firered_name(folder.name) or is_firered_name(str(transformer_config.get("_name_or_path", "")))
    model = resolve_model(detected, detected, named, requested_variant, source)
    variant = model.variant
    text_encoder = WeightSource(_shards(folder / "text_encoder"))
    keys = text_encoder.file_keys()
    if "model.layers.0.self_attn.k_proj.bias" in keys:
        text_encoder.to_file_key = text_encoder_to_comfy
    vae_config = json.loads((folder / "vae" / "config.json").read_text())
    return SourceDescription(
        variant=variant,
        architecture=None,
        transformer=WeightSource(_shards(folder / "transformer")),
        text_encoder=text_encoder,
        vae=WeightSource(_shards(folder / "vae")),
        vae_channels=vae_config.get("input_channels", 3),
        tokenizer_dir=folder / "tokenizer",
        folder=folder,
        model=model,
    )


def transformer_variant(path: Path) -> Variant:
    """The variant of a transformer file from its keys, or its name when the keys prove nothing."""
    _, proven = _transformer_source(path)
    return proven or variant_from_name(path.name)
