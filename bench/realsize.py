"""Pipeline components of a shipped architecture, filled with seeded random weights.

The modules are built on the meta device, cast to the target dtype there (no memory), allocated on
the target device with ``to_empty`` and initialised in place, one tensor at a time. Each tensor draws
from its own generator, seeded from a stable hash of its qualified name, so every run on the same kind
of device gets the same weights whatever the build order.

Initialisation (tuned on a 60-block model, see bench/README.md): weights of Linear and convolution
layers normal with std ``WEIGHT_GAIN / sqrt(fan_in)``, biases zero, norm weights one, embeddings std
0.02. Buffers that are not parameters (the rotary ``inv_freq`` of Qwen2.5-VL) are real tensors under
``init_empty_weights`` and would be left uninitialised by ``to_empty``: they are copied before and put
back after, in their own dtype (float32, as ``from_pretrained`` keeps them). The Qwen-Image RoPE tables
are plain attributes, not buffers, and ``to_empty`` does not touch them.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import torch

from optim.qwen.architectures import (
    Architecture,
    empty_text_encoder,
    empty_transformer,
    empty_vae,
    processor,
    scheduler,
)
from optim.qwen.variants import Variant

# std = WEIGHT_GAIN / sqrt(fan_in). 0.5 (about PyTorch's own Linear default) makes the modulation
# gates ~0.03, so 60 blocks barely change the stream and a precision change would look harmless;
# 1.0 keeps every block's update at a few percent of the stream and the stream within 2x over 60
# blocks (measured, see README).
WEIGHT_GAIN = 1.0
EMBEDDING_STD = 0.02
MODULES = ("transformer", "text_encoder", "vae")


def stable_seed(name: str, base_seed: int = 0) -> int:
    """A 63-bit seed from ``name`` that is the same in every process (``hash()`` is salted)."""
    digest = hashlib.blake2b(f"{base_seed}:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def _is_norm(module: torch.nn.Module) -> bool:
    # RMSNorm, LayerNorm, GroupNorm, Qwen2_5_VLRMSNorm, QwenImageRMS_norm: all say "norm" in their class.
    return "norm" in type(module).__name__.lower()


def initialise_(module: torch.nn.Module, prefix: str, seed: int = 0, gain: float = WEIGHT_GAIN) -> None:
    """Fill every parameter of ``module`` in place (see the module docstring for the rules)."""
    with torch.no_grad():
        for module_name, sub in module.named_modules():
            for param_name, param in sub.named_parameters(recurse=False):
                qualified = ".".join(p for p in (prefix, module_name, param_name) if p)
                if _is_norm(sub):
                    param.fill_(0.0 if "bias" in param_name or param_name == "beta" else 1.0)
                elif param_name.endswith("bias") or param.ndim < 2:
                    param.zero_()
                else:
                    std = EMBEDDING_STD if isinstance(sub, torch.nn.Embedding) else gain / math.sqrt(param[0].numel())
                    generator = torch.Generator(device=param.device).manual_seed(stable_seed(qualified, seed))
                    param.normal_(0.0, std, generator=generator)


def _set_buffer(module: torch.nn.Module, name: str, value: torch.Tensor) -> None:
    owner_name, _, leaf = name.rpartition(".")
    owner = module.get_submodule(owner_name) if owner_name else module
    owner._buffers[leaf] = value  # keeps the persistent/non-persistent flag of the original


def materialise(
    module: torch.nn.Module,
    device: torch.device | str,
    dtype: torch.dtype,
    prefix: str,
    seed: int = 0,
    gain: float = WEIGHT_GAIN,
) -> torch.nn.Module:
    """Allocate a meta-built ``module`` on ``device`` in ``dtype`` and initialise it in place.

    On the meta device the module is only cast (a shape-only build for checks).
    """
    device = torch.device(device)
    buffers = {}
    for name, buffer in module.named_buffers():
        if buffer.is_meta:
            raise ValueError(f"{prefix}.{name} is a meta buffer: build the module with buffers on a real device")
        buffers[name] = buffer.detach().clone()
    # nn.Module.to, not ModelMixin.to: the latter warns about fp32 modules these models do not have.
    # On meta the cast is free; buffers are cast too, and put back below in their own dtype.
    torch.nn.Module.to(module, dtype)
    if device.type != "meta":
        module.to_empty(device=device)
        initialise_(module, prefix, seed, gain)
    for name, value in buffers.items():
        _set_buffer(module, name, value if device.type == "meta" else value.to(device))
    return module


def load_tokenizer(tokenizer_dir: Path | str) -> Any:
    """The real Qwen2.5 tokenizer from a local folder (ComfyUI's ``comfy/text_encoders/qwen25_tokenizer``)."""
    from transformers import Qwen2Tokenizer

    return Qwen2Tokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)


def build_components(
    arch_name: str,
    variant: Variant | str,
    device: torch.device | str,
    dtype: torch.dtype,
    tokenizer_dir: Path | str,
    seed: int = 0,
    park_on: torch.device | str | None = None,
) -> dict[str, Any]:
    """Every component of a ``variant`` pipeline with random weights, initialised on ``device`` in ``dtype``.

    Returns transformer, text_encoder, vae, scheduler, tokenizer, processor, and ``variant`` (a
    ``Variant``, not a pipeline component). ``device="meta"`` builds shapes only. With ``park_on``
    (e.g. ``"cpu"``) each module moves there as soon as it is built, so the device holds one
    component at a time (the transformer, 40.9 GB at real size) instead of all of them.
    """
    arch, variant = Architecture(arch_name), Variant(variant)
    tokenizer = load_tokenizer(tokenizer_dir)
    channels = 4 if variant is Variant.LAYERED else 3

    def build(module: torch.nn.Module, prefix: str) -> torch.nn.Module:
        # The prefix is part of every seed: the text encoder and the VAE draw other numbers than the
        # transformer; the Edit and Layered transformers share all weights but the Layered extras.
        module = materialise(module, device, dtype, prefix, seed)
        return move_component(module, park_on) if park_on is not None else module

    return {
        "transformer": build(empty_transformer(arch, variant), "transformer"),
        "text_encoder": build(empty_text_encoder(arch), "text_encoder"),
        "vae": build(empty_vae(arch, channels), "vae"),
        "scheduler": scheduler(arch),
        "tokenizer": tokenizer,
        "processor": processor(arch, tokenizer),
        "variant": variant,
    }


def make_pipeline(components: dict[str, Any], variant: Variant | str) -> Any:
    """A ``QwenImageEditPlusPipeline`` (Edit-2509/2511) or ``QwenImageLayeredPipeline`` around ``components``.

    The modules are shared, not copied: placing the pipeline places the components.
    """
    from diffusers import QwenImageEditPlusPipeline, QwenImageLayeredPipeline

    cls = QwenImageLayeredPipeline if Variant(variant) is Variant.LAYERED else QwenImageEditPlusPipeline
    parts = ("transformer", "text_encoder", "vae", "scheduler", "tokenizer", "processor")
    pipeline = cls(**{name: components[name] for name in parts})
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def module_bytes(module: torch.nn.Module) -> int:
    """Bytes of the parameters and buffers of ``module``."""
    tensors = list(module.parameters()) + list(module.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def move_component(module: torch.nn.Module, device: torch.device | str) -> torch.nn.Module:
    """Move one component between the GPU and host memory (``"cpu"``), in place.

    Host copies made this way are pageable. Frees the CUDA cache after a move to the host, so the
    next configuration starts from the same GPU state.
    """
    module.to(device)
    if torch.device(device).type == "cpu" and torch.cuda.is_available():
        torch.cuda.empty_cache()
    return module


def components_to(components: dict[str, Any], device: torch.device | str) -> None:
    """Move the transformer, the text encoder and the VAE to ``device`` (see ``move_component``)."""
    for name in MODULES:
        move_component(components[name], device)


def empty_pinned_cache() -> None:
    """Give the pinned blocks torch's caching host allocator keeps after their tensors died back to the OS."""
    empty = getattr(torch._C, "_host_emptyCache", None)  # private, present in torch 2.x
    if torch.cuda.is_available() and empty is not None:
        torch.cuda.synchronize()  # a block is reusable only once the copies that used it have finished
        empty()


def make_pageable_(module: torch.nn.Module, flush_every: int = 4 * 2**30) -> int:
    """Give every host tensor of ``module`` that is pinned, or was made under ``inference_mode``, a fresh
    pageable copy; returns the bytes copied.

    Group offloading leaves the weights in its pinned copies after its hooks are removed, and moves
    some groups inside the pipeline's inference mode; the next configuration must find the weights
    as the first one did. The freed pinned blocks go back to the OS every ``flush_every`` bytes, so
    the host never holds both full copies (41 GB each for the real transformer).
    """
    cuda = torch.cuda.is_available()
    moved = pending = 0
    with torch.no_grad():
        for tensor in list(module.parameters()) + list(module.buffers()):
            data = tensor.data
            if data.device.type != "cpu" or not (data.is_inference() or (cuda and data.is_pinned())):
                continue
            copy = torch.empty(data.shape, dtype=data.dtype, device="cpu")
            copy.copy_(data)
            tensor.data = copy
            del data
            size = copy.numel() * copy.element_size()
            moved, pending = moved + size, pending + size
            if pending >= flush_every:
                empty_pinned_cache()
                pending = 0
    empty_pinned_cache()
    return moved


def fingerprint(components: dict[str, Any]) -> str:
    """A digest of every weight's name, shape, dtype and first values: cheap, and it changes when a
    configuration casts, quantizes or replaces a weight and fails to put it back."""
    digest = hashlib.blake2b(digest_size=16)
    # inference_mode: weights a pipeline touched under inference mode refuse views outside it.
    with torch.inference_mode():
        for part in MODULES:
            for name, tensor in list(components[part].named_parameters()) + list(components[part].named_buffers()):
                digest.update(f"{part}.{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
                if tensor.numel() and not tensor.is_meta and tensor.untyped_storage().nbytes() == 0:
                    # A released QwenFit engine frees the weights it took over (drop_weights): changed.
                    digest.update(b"dropped")
                elif not tensor.is_meta and tensor.numel():
                    # take() copies without making a view: torch 2.11 refuses views of inference tensors.
                    picks = torch.arange(min(16, tensor.numel()), device=tensor.device)
                    head = torch.take(tensor.data, picks).to("cpu", torch.float64)
                    digest.update(head.numpy().tobytes())
    return digest.hexdigest()
