"""How several GPUs share one forward's work, as whole numbers: the one copy of that arithmetic for the
planner (which predicts with it) and the engine (which cuts the tensors with it)."""

from __future__ import annotations

from collections.abc import Sequence


def proportional_counts(total: int, weights: Sequence[float], minimum: int = 1) -> tuple[int, ...]:
    """``total`` split into whole counts in proportion to ``weights`` (largest remainders get the rest),
    each at least ``minimum``. Raises ValueError when ``total`` cannot give every part its minimum."""
    parts = len(weights)
    if parts < 1 or any(w <= 0 for w in weights):
        raise ValueError(f"proportional_counts needs positive weights, got {list(weights)}")
    if total < minimum * parts:
        raise ValueError(f"{total} cannot be split into {parts} parts of at least {minimum}")
    spare = total - minimum * parts
    scale = sum(weights)
    exact = [spare * w / scale for w in weights]
    counts = [int(e) for e in exact]
    by_remainder = sorted(range(parts), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in by_remainder[: spare - sum(counts)]:
        counts[i] += 1
    return tuple(minimum + c for c in counts)


def head_shares(heads: int, speeds: Sequence[float]) -> tuple[int, ...]:
    """Attention heads per GPU of a sequence-parallel forward, in proportion to the GPUs' speeds (at least
    one each): a GPU attends with its heads over every token, so its attention work follows its heads."""
    return proportional_counts(heads, speeds, minimum=1)


def token_spans(tokens: int, shares: Sequence[int]) -> tuple[tuple[int, int], ...]:
    """(start, stop) of the image tokens each GPU holds: cut in order, in proportion to ``shares`` (its
    heads), so each GPU's per-token work matches its attention work. A span may be empty."""
    counts = proportional_counts(tokens, shares, minimum=0)
    spans, start = [], 0
    for count in counts:
        spans.append((start, start + count))
        start += count
    return tuple(spans)
