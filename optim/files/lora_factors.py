"""Reading LoRA files as low-rank factors per Linear layer, checked against the model they change.

Key styles read (all seen in Qwen-Image LoRAs):
- kohya: ``lora_unet_transformer_blocks_0_attn_to_q.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha``;
- diffusers / PEFT: ``transformer.<module>.lora_A.weight`` / ``.lora_B.weight`` (also ``.default``);
- ComfyUI: ``diffusion_model.<module>.lora_A/.lora_B`` or ``.lora_down/.lora_up`` (and ``.alpha``);
- lightx2v Lightning: bare ``transformer_blocks.N.<module>.lora_down.weight`` / ``.lora_up.weight`` /
  ``.alpha`` (rank 64, alpha 8: a reader that ignores alpha applies them 8x too strong).

An update is ``strength * alpha / rank * up @ down``; without an alpha, alpha = rank (PEFT's default).
What is read is kept per file (path, size, modification time), so re-weighting or re-stacking reads
nothing again.
"""

from __future__ import annotations

import math
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import QwenFitError
from ..qwen.anatomy import is_modulation_layer
from .safetensors_file import SafetensorsFile

# Prefixes the formats put before the transformer's own module names.
_PREFIXES = ("base_model.model.", "transformer.", "model.diffusion_model.", "diffusion_model.")
_KOHYA = re.compile(r"^lora_unet_(.+)\.(lora_down|lora_up)\.weight$")
_DOTTED = re.compile(r"^(.+)\.(lora_A|lora_B|lora_down|lora_up)(?:\.default)?\.weight$")
_FIX = "remove it from the stack (or set lora to none)"

# Layer name -> (out_features, in_features) of every Linear of the model a LoRA may change.
LayerShapes = Mapping[str, tuple[int, int]]


@dataclass(frozen=True)
class LoraLayer:
    """One layer's pair in a LoRA file: its keys, rank and alpha (alpha / rank scales the update)."""

    down_key: str
    up_key: str
    rank: int
    in_features: int
    out_features: int
    alpha: float

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


@dataclass(frozen=True)
class LoraFile:
    """A LoRA file's pairs, by the model's layer names (kohya names still underscored until matched)."""

    path: Path
    layers: dict[str, LoraLayer]
    kohya: bool

    @property
    def rank(self) -> int:
        return max((layer.rank for layer in self.layers.values()), default=0)

    @property
    def factor_count(self) -> int:
        """Numbers in all factors (down and up) of the file."""
        return sum(layer.rank * (layer.in_features + layer.out_features) for layer in self.layers.values())

    @property
    def factor_count_on_gpu(self) -> int:
        """Numbers in the factors kept on the GPU: the modulation layers' stay on the host (they run once per
        schedule, into the modulation table, and are copied over for that)."""
        return sum(
            layer.rank * (layer.in_features + layer.out_features)
            for name, layer in self.layers.items()
            if not is_modulation_layer(name)
        )

    @property
    def largest_layer(self) -> int:
        """Weights of the largest layer the file changes (a merged copy of it is the update's workspace)."""
        return max((layer.in_features * layer.out_features for layer in self.layers.values()), default=0)


def file_stamp(path: Path) -> tuple:
    """(path, size, modification time): what identifies a file's contents for the caches."""
    try:
        stat = path.stat()
    except OSError as exc:
        raise QwenFitError(
            f"LoRA {path.name} could not be read ({exc.strerror}): put it back in models/loras."
        ) from None
    return (str(path), stat.st_size, stat.st_mtime_ns)


def _strip(name: str) -> str:
    for prefix in _PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix) :]
    return name


def _parse(path: Path) -> LoraFile:
    """The pairs of ``path`` from its header (alphas are read: a few bytes each), each checked in itself."""
    file = SafetensorsFile(path)
    name = path.name
    roles: dict[str, dict[str, str]] = {}
    kohya = False
    for key in file.keys():
        match = _KOHYA.match(key)
        if match:
            kohya = True
            stem, role = match.group(1), ("down" if match.group(2) == "lora_down" else "up")
            alpha_key = f"lora_unet_{stem}.alpha"
        else:
            match = _DOTTED.match(key)
            if not match:
                continue
            stem, role = _strip(match.group(1)), ("down" if match.group(2) in ("lora_A", "lora_down") else "up")
            alpha_key = f"{match.group(1)}.alpha"
        entry = roles.setdefault(stem, {})
        entry[role] = key
        if alpha_key in file.tensors:
            entry["alpha"] = alpha_key
    layers = {}
    for stem, keys in roles.items():
        if "down" not in keys or "up" not in keys:
            missing = "lora_up (lora_B)" if "up" not in keys else "lora_down (lora_A)"
            raise QwenFitError(
                f"{name}: layer {stem} has no {missing}, so the file is incomplete: download it again, or {_FIX}."
            )
        down, up = file.shape(keys["down"]), file.shape(keys["up"])
        if len(down) != 2 or len(up) != 2:
            raise QwenFitError(
                f"{name}: layer {stem} has factors of shapes {list(down)} and {list(up)}, not matrices: it is a "
                f"LoRA for another kind of model (convolutions). Pick a Qwen-Image LoRA, or {_FIX}."
            )
        if down[0] != up[1]:
            raise QwenFitError(
                f"{name}: layer {stem}'s ranks do not match (lora_down has {down[0]} rows, lora_up {up[1]} "
                f"columns): the file is damaged. Download it again, or {_FIX}."
            )
        alpha = float(down[0])
        if "alpha" in keys:
            value = file.read(keys["alpha"]).float().reshape(-1)
            alpha = float(value[0]) if value.numel() else math.nan
            if not math.isfinite(alpha):
                raise QwenFitError(
                    f"{name}: layer {stem} has alpha {alpha}, which is not a number to scale by: the file is "
                    f"damaged. Download it again, or {_FIX}."
                )
        layers[stem] = LoraLayer(keys["down"], keys["up"], down[0], down[1], up[0], alpha)
    return LoraFile(Path(path), layers, kohya)


_KEPT_FILES = 4  # factors of the last few files stay in host memory (a 20B model's rank-64 LoRA is ~0.8 GB)
_parsed: dict[tuple, LoraFile] = {}
_factors: OrderedDict[tuple, dict[str, tuple[torch.Tensor, torch.Tensor]]] = OrderedDict()
_lock = threading.Lock()


def read_lora(path: Path) -> LoraFile:
    """``path``'s pairs (header only), remembered until the file changes."""
    stamp = file_stamp(Path(path))
    with _lock:
        known = _parsed.get(stamp)
    if known is None:
        known = _parse(Path(path))
        with _lock:
            _parsed[stamp] = known
    return known


def match_layers(path: Path, shapes: LayerShapes) -> LoraFile:
    """``path``'s pairs by the model's layer names, each checked against the layer's shape.

    Refuses (QwenFitError naming the file, the layer and the fix) a file that changes no layer of the
    model, and a pair whose widths are not its layer's. Pairs for layers the model lacks are left out
    (LoRAs trained on the text encoder too carry them)."""
    lora = read_lora(path)
    name = Path(path).name
    underscored = {layer.replace(".", "_"): layer for layer in shapes} if lora.kohya else {}
    matched = {}
    for stem, pair in lora.layers.items():
        layer = underscored.get(stem, stem)
        if layer not in shapes:
            continue
        out_features, in_features = shapes[layer]
        if (pair.out_features, pair.in_features) != (out_features, in_features):
            raise QwenFitError(
                f"{name}: layer {layer} is {out_features}x{in_features} in this model but the LoRA's is "
                f"{pair.out_features}x{pair.in_features}: it is a LoRA for another model. Pick a Qwen-Image-Edit / "
                f"Layered LoRA, or {_FIX}."
            )
        matched[layer] = pair
    if not matched:
        raise QwenFitError(
            f"{name} changes no layer of this Qwen-Image transformer: it is a LoRA for another model (or not a "
            "LoRA). Pick a Qwen-Image-Edit / Layered LoRA, or set lora to none."
        )
    return LoraFile(lora.path, matched, False)


def read_factors(lora: LoraFile) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{layer: (down [rank, in], up [out, rank])} as stored (CPU), for a file matched to the model; the
    last few files' factors are kept, so a new strength or stack reads nothing."""
    stamp = file_stamp(lora.path)
    key = (stamp, tuple(sorted((layer, pair.down_key) for layer, pair in lora.layers.items())))
    with _lock:
        if key in _factors:
            _factors.move_to_end(key)
            return _factors[key]
    file = SafetensorsFile(lora.path)
    factors = {layer: (file.read(pair.down_key), file.read(pair.up_key)) for layer, pair in lora.layers.items()}
    with _lock:
        _factors[key] = factors
        while len(_factors) > _KEPT_FILES:
            _factors.popitem(last=False)
    return factors
