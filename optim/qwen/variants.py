"""Which Qwen-Image model a set of weights is, from its configs."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from ..errors import QwenFitError


class Variant(str, Enum):
    """The Qwen-Image models the pack runs (one transformer architecture, told apart by config flags)."""

    EDIT_2509 = "edit-2509"
    EDIT_2511 = "edit-2511"
    LAYERED = "layered"

    @property
    def is_edit(self) -> bool:
        return self is not Variant.LAYERED

    @property
    def title(self) -> str:
        return _TITLES[self]


_TITLES = {
    Variant.EDIT_2509: "Qwen-Image-Edit-2509",
    Variant.EDIT_2511: "Qwen-Image-Edit-2511",
    Variant.LAYERED: "Qwen-Image-Layered",
}

# FireRed-Image-Edit 1.0/1.1 (FireRedTeam, Apache-2.0): the same 20B transformer, loaded by its authors with
# QwenImageEditPlusPipeline; its transformer configs do not set zero_cond_t (sglang PR 20862), so it runs as
# Edit-2509. Its weights have the same keys and shapes as Edit-2509's: only a name tells it apart.
FIRERED = "firered-edit"
VARIANT_CHOICES = ("auto",) + tuple(v.value for v in Variant) + (FIRERED,)


@dataclass(frozen=True)
class ModelIdentity:
    """What the weights are (for reports) and the architecture they run as."""

    variant: Variant
    firered: bool = False

    def describe(self) -> str:
        if self.firered:
            return f"FireRed-Image-Edit (runs as {self.variant.title}: the same transformer, no zero_cond_t)"
        return self.variant.title


def is_firered_name(name: str) -> bool:
    """Whether a file or folder name says FireRed-Image-Edit (Comfy-Org's firered_image_edit_1.0_bf16,
    FireRedTeam's FireRed-Image-Edit-1.1 folder, community renames)."""
    return "firered" in name.lower().replace("-", "").replace("_", "").replace(" ", "")


_PIPELINE_CLASSES = {
    "QwenImageEditPlusPipeline": (Variant.EDIT_2509, Variant.EDIT_2511),
    "QwenImageLayeredPipeline": (Variant.LAYERED,),
}


def variant_from_transformer_config(config: dict[str, Any]) -> Variant:
    """Tell the variant from ``transformer/config.json`` flags (see the field notes, section 1)."""
    if config.get("use_layer3d_rope") or config.get("use_additional_t_cond"):
        return Variant.LAYERED
    if config.get("zero_cond_t"):
        return Variant.EDIT_2511
    return Variant.EDIT_2509


def detect_variant(model_index: dict[str, Any], transformer_config: dict[str, Any], source: str) -> Variant:
    """Detect the variant of a diffusers folder and check the pipeline class agrees.

    ``source`` names the folder in error messages.
    """
    class_name = model_index.get("_class_name", "")
    if class_name not in _PIPELINE_CLASSES:
        raise QwenFitError(
            f"{source} holds a {class_name or 'unknown'} pipeline, not Qwen-Image-Edit-2509/2511 or "
            "Qwen-Image-Layered: pick a Qwen-Image-Edit or Qwen-Image-Layered folder."
        )
    variant = variant_from_transformer_config(transformer_config)
    if variant not in _PIPELINE_CLASSES[class_name]:
        raise QwenFitError(
            f"{source}: model_index.json says {class_name} but the transformer config is {variant.value}; "
            "the folder mixes parts of two models. Re-copy the folder from one release."
        )
    return variant


def resolve_variant(proven: Variant | None, guessed: Variant, requested: str, source: str) -> Variant:
    """Apply the loader's variant choice. ``proven`` is what the weights or configs establish (None when
    they carry no marker, as a 2509/2511 file without one); ``guessed`` comes from the file name.
    Choices the weights contradict are refused."""
    if requested == "auto":
        return proven or guessed
    if requested not in VARIANT_CHOICES:
        raise QwenFitError(f"variant {requested!r} is unknown; pick one of {', '.join(VARIANT_CHOICES)}.")
    if requested == FIRERED:
        return resolve_model(proven, guessed, True, requested, source).variant
    wanted = Variant(requested)
    if proven is not None and wanted is not proven:
        raise QwenFitError(
            f"{source} is {proven.value} by its weights, but variant={wanted.value} was asked for. "
            f"Set variant to auto (or {proven.value}), or pick a {wanted.value} model."
        )
    if proven is None and (wanted is Variant.LAYERED) != (guessed is Variant.LAYERED):
        raise QwenFitError(f"{source} has no Layered weights; variant={wanted.value} cannot apply to it.")
    return wanted


def resolve_model(
    proven: Variant | None, guessed: Variant, named_firered: bool, requested: str, source: str
) -> ModelIdentity:
    """``resolve_variant`` plus FireRed: named so (``named_firered``) or asked for (variant=firered-edit), the
    weights run as Edit-2509 and the reports say FireRed-Image-Edit. FireRed is never run as 2511 or Layered."""
    if requested == FIRERED:
        if proven is not None and proven is not Variant.EDIT_2509:
            raise QwenFitError(
                f"{source} is {proven.value} by its weights, but variant={FIRERED} was asked for; FireRed-Image-Edit "
                f"has no such marker. Set variant to auto (or {proven.value}), or pick a FireRed-Image-Edit model."
            )
        if guessed is Variant.LAYERED:
            raise QwenFitError(f"{source} is named as a Layered model; variant={FIRERED} cannot apply to it.")
        return ModelIdentity(Variant.EDIT_2509, firered=True)
    variant = resolve_variant(proven, guessed, requested, source)
    if named_firered and proven is None and variant is not Variant.EDIT_2509:
        raise QwenFitError(
            f"{source} is FireRed-Image-Edit by its name, which runs as edit-2509 (its transformer config has no "
            f"zero_cond_t); variant={variant.value} would compute something it was not trained for. Set variant to "
            f"auto or {FIRERED}, or rename the file if it is not FireRed."
        )
    return ModelIdentity(variant, firered=named_firered and variant is Variant.EDIT_2509)
