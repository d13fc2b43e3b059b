"""The plan preview's web side: parse the route's query into the core's PreviewSettings, and turn the
core's Preview into the JSON the browser draws.

Every parameter is checked (``BadParameter`` names it and says why). The settings' parameter names
come from the core's settings schema, so the preview reads every setting the nodes have.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from ..optim import (
    MASKED_PREVIEW_NOTE,
    PICKLE_SUFFIXES,
    SETTINGS_SCHEMA,
    SETTINGS_TYPES,
    VARIANT_CHOICES,
    Preview,
    PreviewSettings,
    QwenFitError,
    SettingsGroup,
    job_limits,
)

JOB_KINDS = ("auto", "edit", "layered")
MODEL_PARAMETERS = ("model", "variant", "text_encoder", "vae", "lora", "lora_strength", "loras")
MAX_LORAS = 16  # QwenFit LoRA nodes in one chain the preview reads
JOB_PARAMETERS = (
    "job", "width", "height", "aspect", "references", "layers", "resolution", "steps", "cfg_scale", "caption",
    "masked",
)  # fmt: skip
SETTING_PARAMETERS = tuple(c.query for group in SETTINGS_SCHEMA for c in group.choices)
QUERY_NAMES = (*MODEL_PARAMETERS, *SETTING_PARAMETERS, *JOB_PARAMETERS)


class BadParameter(ValueError):
    """A query parameter that is missing, unknown or out of range; ``reason`` says what would do."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name, self.reason = name, reason


class MissingFile(BadParameter):
    """A file name the loader does not list: the user has not put that file in place yet. A normal state
    (a shared preset names files the user may not have), so the route answers it, not refuses it."""


# The folder each file parameter's names come from (the message says where to put the file).
_FOLDERS = {
    "model": "models/diffusion_models",
    "text_encoder": "models/text_encoders",
    "vae": "models/vae",
    "lora": "models/loras",
    "loras": "models/loras",
}
_MODEL_FILE_SUFFIXES = (".safetensors", ".gguf")


def _folder_for(name: str, value: str) -> str:
    """Where the file ``value`` of parameter ``name`` goes (a model without a file suffix is a diffusers folder)."""
    if name == "model" and not value.lower().endswith(_MODEL_FILE_SUFFIXES):
        return "models/diffusers"
    return _FOLDERS[name]


_NOT_A_NAME = re.compile(r"[\x00-\x1f\\]|://|(^|/)\.\.(/|$)|^/|^[A-Za-z]:")
_MAX_NAME = 512


def _file(params: Mapping[str, str], name: str, allowed: tuple[str, ...], default: str) -> str:
    value = params.get(name, default)
    if value in allowed:
        return value
    if len(value) > _MAX_NAME or _NOT_A_NAME.search(value):  # no loader lists such a name: a bad request
        raise BadParameter(name, "is not a file name the loader could list; pick one from the loader's list")
    if value.lower().endswith(PICKLE_SUFFIXES):
        raise BadParameter(name, f"{value!r} is not offered: QwenFit never loads pickle files; use a .safetensors file")
    # The file and its folder first, then the fix: the badge shows this whole, and a user needs all three.
    raise MissingFile(
        name,
        f"{value!r} is missing from {_folder_for(name, value)}: put the file there and refresh, "
        "or pick one the loader lists",
    )


@dataclass(frozen=True)
class ModelChoices:
    """The names the host lists (what its loader's dropdowns offer)."""

    models: tuple[str, ...]
    text_encoders: tuple[str, ...]
    vaes: tuple[str, ...]
    loras: tuple[str, ...]


def _choice(params: Mapping[str, str], name: str, allowed: tuple[str, ...], default: str) -> str:
    value = params.get(name, default)
    if value not in allowed:
        shown = ", ".join(allowed) if len(allowed) <= 12 else f"one of the {len(allowed)} names the loader lists"
        raise BadParameter(name, f"{value!r} is not offered; use {shown}")
    return value


def _number(params: Mapping[str, str], name: str, kind: type, low: float, high: float, default: Any) -> Any:
    if name not in params:
        return default
    raw = params[name]
    try:
        value = kind(raw)
    except (TypeError, ValueError):
        raise BadParameter(name, f"{raw!r} is not a{'n integer' if kind is int else ' number'}") from None
    if not (low <= value <= high) or (isinstance(value, float) and not math.isfinite(value)):
        raise BadParameter(name, f"{raw} is out of range; use {low} to {high}")
    return value


def _flag(params: Mapping[str, str], name: str, default: bool) -> bool:
    raw = params.get(name)
    if raw is None:
        return default
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise BadParameter(name, f"{raw!r} is not a switch; use 1 or 0")


def _settings(params: Mapping[str, str], group: SettingsGroup) -> Any:
    """The settings value of ``group`` from the query (each choice under its query name)."""
    values = {c.field: _choice(params, c.query, c.options, c.default) for c in group.choices}
    try:
        return SETTINGS_TYPES[group.loader_input](**values)
    except QwenFitError as error:  # a combination the settings refuse (the VAE in fp8, say)
        field = getattr(error, "field", None)
        choice = group.choice(field) if field else group.choices[-1]
        raise BadParameter(choice.query, str(error)) from None


def _lora_chain(params: Mapping[str, str], loras: tuple[str, ...]) -> tuple[tuple[str, float], ...]:
    """The QwenFit LoRA nodes' choices: ``loras`` is a JSON list of [name, strength] pairs."""
    raw = params.get("loras")
    if raw is None:
        return ()
    try:
        pairs = json.loads(raw)
    except (ValueError, RecursionError):
        raise BadParameter("loras", "is not JSON; give a list of [name, strength] pairs") from None
    if not isinstance(pairs, list) or len(pairs) > MAX_LORAS:
        raise BadParameter("loras", f"give a list of at most {MAX_LORAS} [name, strength] pairs")
    chain = []
    for pair in pairs:
        if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str)):
            raise BadParameter("loras", "each entry is a [name, strength] pair")
        name = _file({"loras": pair[0]}, "loras", loras, "")
        chain.append((name, _number({"loras": pair[1]}, "loras", float, -4.0, 4.0, 1.0)))
    return tuple(chain)


def parse_preview_query(params: Mapping[str, str], choices: ModelChoices) -> PreviewSettings:
    """Check every parameter of a preview request; raises ``BadParameter`` at the first wrong one."""
    limits = job_limits
    unknown = sorted(set(params) - set(QUERY_NAMES))
    if unknown:
        raise BadParameter(unknown[0], f"unknown parameter; the parameters are {', '.join(QUERY_NAMES)}")
    if "model" not in params:
        raise BadParameter("model", "missing; give a model as the loader lists it")
    model = _file(params, "model", choices.models, "")
    width = _number(params, "width", int, 0, limits.MAX_SIZE, 0)
    height = _number(params, "height", int, 0, limits.MAX_SIZE, 0)
    for name, value in (("width", width), ("height", height)):
        if value and (value < limits.MIN_SIZE or value % limits.SIZE_MULTIPLE):
            raise BadParameter(name, f"{value} is not usable; use 0 (automatic) or a multiple of "
                               f"{limits.SIZE_MULTIPLE} from {limits.MIN_SIZE} to {limits.MAX_SIZE}")  # fmt: skip
    if (width == 0) != (height == 0):
        raise BadParameter("height" if width else "width", "set both width and height, or both to 0")
    precision, offload, vae_settings = (_settings(params, group) for group in SETTINGS_SCHEMA)
    resolutions = limits.RESOLUTIONS
    resolution = _number(params, "resolution", int, min(resolutions), max(resolutions), 640)
    if resolution not in resolutions:
        raise BadParameter("resolution", f"{resolution} is not offered; Qwen-Image-Layered takes 640 or 1024")
    return PreviewSettings(
        model=model,
        variant=_choice(params, "variant", VARIANT_CHOICES, "auto"),
        text_encoder=_file(params, "text_encoder", ("auto", *choices.text_encoders), "auto"),
        vae=_file(params, "vae", ("auto", *choices.vaes), "auto"),
        lora=_file(params, "lora", ("none", *choices.loras), "none"),
        lora_strength=_number(params, "lora_strength", float, -4.0, 4.0, 1.0),
        loras=_lora_chain(params, choices.loras),
        precision=precision,
        offload=offload,
        vae_settings=vae_settings,
        job=_choice(params, "job", JOB_KINDS, "auto"),
        width=width,
        height=height,
        aspect=_number(params, "aspect", float, 0.05, 20.0, 1.0),
        references=_number(params, "references", int, 1, limits.MAX_REFERENCES, 1),
        layers=_number(params, "layers", int, limits.MIN_LAYERS, limits.MAX_LAYERS, 4),
        resolution=resolution,
        steps=_number(params, "steps", int, 0, limits.MAX_STEPS, 0),
        cfg_scale=_number(params, "cfg_scale", float, 1.0, 20.0, 4.0),
        caption=_flag(params, "caption", False),
        masked=_flag(params, "masked", False),
    )


def _rung_note(answer: Preview) -> list[str]:
    if not answer.rungs:
        return []
    return ["predicted s/step per speed: " + ", ".join(f"{rung} {seconds:.2f}" for rung, seconds in answer.rungs)]


def preview_json(settings: PreviewSettings, answer: Preview, device: str) -> dict[str, Any]:
    """The preview as the browser reads it."""
    plan, sizes, job, host = answer.plan, answer.sizes, answer.job, answer.plan.host
    data: dict[str, Any] = {
        "ok": True,
        "model": settings.model,
        "variant": answer.variant.value,
        "model_name": answer.model or answer.variant.title,
        "device": "no GPU: runs on the CPU" if device == "cpu" else device,
        "job": {**asdict(job), "text": job.describe()},
        "weights": {
            "transformer_bytes": sizes.transformer_bytes,
            "text_encoder_bytes": sizes.text_encoder_bytes,
            "vae_bytes": sizes.vae_bytes,
        },
        "host": None
        if host is None
        else {
            "budget_bytes": host.budget_bytes,
            "predicted_bytes": host.predicted_bytes,
            "text_encoder": host.text_encoder,
            "modulation": host.modulation,
            "text": "\n".join(host.describe_lines()),
        },
        "notes": [
            *(host.notes if host else ()),
            *plan.notes,
            *answer.notes,
            *_rung_note(answer),
            *([MASKED_PREVIEW_NOTE] if settings.masked and job.kind == "edit" else []),
        ],
        "budget_bytes": plan.budget_bytes,
        "phases": [{"name": name, "peak_bytes": peak} for name, peak in plan.phase_peaks],
        "predicted_peak_bytes": plan.predicted_peak_bytes,
        "pinned_bytes": plan.pinned_bytes,
        "seconds_per_step": plan.seconds_per_step,
        "loras": [
            {"name": line.name, "strength": line.strength, "rank": line.rank, "bytes": line.nbytes}
            for line in plan.loras.lines
        ],
        "plan": {
            "blocks": sizes.blocks,
            "resident_blocks": len(plan.resident_blocks),
            "streamed_blocks": len(plan.streamed_blocks),
            "slots": plan.slots,
            "text_encoder": plan.text_encoder,
            "cfg": plan.cfg,
            "vae_tiling": plan.vae_tiling,
            "vae_encode_tiling": plan.vae_encode_tiling,
            "vae_slicing": plan.vae_slicing,
            "strategy": plan.strategy,
            "reason": plan.reason,
            "gpus": [{"device": d, "peak_bytes": b} for d, b in plan.device_peaks],
            "text": plan.describe(),
            "summary": answer.placement,  # the badge's line: where the weights are
        },
    }
    if not plan.places_weights:
        data["notes"].append(
            "offload mode 'model' is diffusers' whole-component offload: the planner does not place it, so "
            "there is no prediction (it is also the slowest mode)."
        )
    if answer.step is not None:
        data.update(seconds_per_step_model=answer.step.seconds, step_basis=answer.step.basis)
    if answer.calibration is not None:
        data["calibration"] = {"factor": answer.calibration.factor, "from": answer.calibration.source}
    return data
