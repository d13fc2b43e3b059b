"""VRAM budgets: the card sizes users name, and what of them PyTorch can really use."""

from __future__ import annotations

import torch

from .errors import QwenFitError

GIB = 1024**3
# Usable GiB per card: the CUDA context, the desktop and the browser take the rest
# (an 8 GB card leaves about 7 GiB to PyTorch).
CARD_BUDGETS = {"8 GB": 7.0, "12 GB": 10.75, "16 GB": 14.5, "24 GB": 22.0, "48 GB": 45.0}
VRAM_BUDGETS = ("auto", *CARD_BUDGETS, "unlimited")
# What "auto" leaves free of the memory the driver reports free when the plan is made.
_AUTO_MARGIN = 512 * 1024**2


def usable_bytes(budget: str, device: torch.device) -> int | None:
    """Bytes the plan may use on ``device`` under ``budget``; None means no limit."""
    if budget not in VRAM_BUDGETS:
        raise QwenFitError(f"VRAM budget {budget!r} is not supported; pick one of {', '.join(VRAM_BUDGETS)}.")
    if device.type != "cuda" or budget == "unlimited":
        return None
    if budget == "auto":
        free, _ = torch.cuda.mem_get_info(device)
        # Memory this process already holds in its cache is free for the plan too.
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return max(free + cached - _AUTO_MARGIN, 0)
    return int(CARD_BUDGETS[budget] * GIB)
