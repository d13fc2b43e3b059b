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


def plan_many(job: JobShape, gpus: list[Gpu], cfg: str = "batched", strategy: str = "auto") -> Plan:
    """The planner's plan for ``job`` over ``gpus``."""
    offload = OffloadSettings(cfg=cfg, gpus="all", multi_gpu=strategy)
    return plan_run(real_sizes(), job, offload, VaeSettings(), tuple(gpus))
