"""The real-size model's sizes, measured from meta modules (no memory used)."""

from __future__ import annotations

from functools import cache

import torch

from optim.planning.model_sizes import ModelSizes, measure
from optim.planning.plan import Plan
from optim.planning.planner import Gpu, plan_run
from optim.qwen.architectures import Architecture, empty_text_encoder, empty_transformer, empty_vae
from optim.qwen.job_shape import JobShape
from optim.qwen.variants import Variant
from optim.settings import OffloadSettings, VaeSettings


class _Parts:
    pass


@cache
def real_sizes() -> ModelSizes:
    arch = Architecture("qwen-image")
    parts = _Parts()
    parts.transformer = empty_transformer(arch, Variant.EDIT_2509).to(torch.bfloat16)
    parts.text_encoder = empty_text_encoder(arch).to(torch.bfloat16)
    parts.vae = empty_vae(arch, 3).to(torch.bfloat16)
    return measure(parts)


def plan_one(
    job: JobShape,
    budget_bytes: int | None,
    mode: str = "auto",
    cfg: str = "batched",
    vae_tiling: str = "auto",
) -> Plan:
    """The planner's plan for ``job`` on one GPU of ``budget_bytes`` (None: no limit)."""
    offload = OffloadSettings(mode=mode, cfg=cfg)
    return plan_run(real_sizes(), job, offload, VaeSettings(tiling=vae_tiling), (Gpu("cuda:0", budget_bytes),))


def plan_many(job: JobShape, gpus: list[Gpu], cfg: str = "batched", strategy: str = "auto", mode: str = "auto") -> Plan:
    """The planner's plan for ``job`` over ``gpus``."""
    offload = OffloadSettings(mode=mode, cfg=cfg, gpus="all", multi_gpu=strategy)
    return plan_run(real_sizes(), job, offload, VaeSettings(), tuple(gpus))


# The layers lightx2v's Lightning LoRAs change in every transformer block.
LORA_LAYERS = (
    "attn.to_q", "attn.to_k", "attn.to_v", "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj",
    "attn.to_out.0", "attn.to_add_out", "img_mlp.net.0.proj", "img_mlp.net.2", "txt_mlp.net.0.proj",
    "txt_mlp.net.2", "img_mod.1", "txt_mod.1",
)  # fmt: skip


@cache
def real_layer_shapes() -> dict[str, tuple[int, int]]:
    """(out, in) of every block Linear of the real-size transformer, by name (meta modules: no memory)."""
    transformer = empty_transformer(Architecture("qwen-image"), Variant.EDIT_2509)
    return {
        name: (m.out_features, m.in_features)
        for name, m in transformer.named_modules()
        if isinstance(m, torch.nn.Linear) and name.startswith("transformer_blocks.")
    }


def write_real_size_lora(path, style: str = "lightx2v", rank: int = 64, alpha: float = 8.0, seed: int = 0):
    """A random LoRA for the real-size Qwen-Image transformer, rank ``rank`` on every block's
    ``LORA_LAYERS`` (~0.8 GB in bf16 at rank 64), in ``style``: "lightx2v" (bare
    ``transformer_blocks.N....lora_down/lora_up/alpha``, as the Lightning files) or "peft" (``transformer.
    ....lora_A/lora_B``, no alpha: scale 1). Small values: the images stay sane. For the benchmark's
    LoRA-stack row: two of these (one per style) on the 8 GB preset, e.g.
    ``loaded.with_lora(LoraChoice(a)).with_lora(LoraChoice(b, 0.5))``."""
    from pathlib import Path

    from safetensors.torch import save_file
    from tiny_files import lora_keys

    shapes = {k: v for k, v in real_layer_shapes().items() if k.split(".", 2)[2] in LORA_LAYERS}
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer, (out_features, in_features) in sorted(shapes.items()):
        down_key, up_key, alpha_key = lora_keys(style, layer)
        tensors[down_key] = (torch.randn(rank, in_features, generator=generator) / in_features**0.5).bfloat16()
        tensors[up_key] = (torch.randn(out_features, rank, generator=generator) * 1e-3).bfloat16()
        if style != "peft":
            tensors[alpha_key] = torch.tensor(float(alpha))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    return Path(path)
