"""How the planner chooses among its candidate plans: one GPU or a block split (the baseline, by
``preference``), CFG-parallel or sequence-parallel (by ``relative_step``, the time model), and the one-line
reason the chosen plan carries.

The time model is a step's time relative to one GPU computing it with every block resident, from the plan
alone (which GPU computes what, what each streams) and the GPUs' relative speeds. It only ranks the
strategies; seconds per step come from optim/planning/step_time.py.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

from .plan import CFG_PARALLEL, ONE_GPU, SEQUENCE_PARALLEL, Plan
from .work_split import token_spans

# Assumed until measured on GPUs: streaming every block over one GPU's PCIe link takes about as long as
# that GPU computing one sample's pass over them (a CFG step computes two samples per crossing).
STREAM_TO_COMPUTE = 1.0
# A parallel plan replaces the baseline only when it predicts a step at least 10% shorter: below that,
# the exchanges between the GPUs and the model's error eat the gain.
PARALLEL_GAIN = 0.9
# Strategies where every GPU runs every block (each on its own sample or share of the tokens).
PARALLEL = (CFG_PARALLEL, SEQUENCE_PARALLEL)


def relative_step(plan: Plan, speeds: Mapping[str, float] | None = None) -> float:
    """A step's time relative to the plan's first GPU computing it with every block resident: the larger of
    compute and streaming (a copy stream runs ahead of the compute) on the GPU that finishes last.

    One GPU or a block split: the blocks run one GPU after the other (the streamed ones on the first), so
    the compute is the sum of each GPU's share of the blocks over its speed. CFG-parallel: each GPU computes
    one of the two samples. Sequence-parallel: each GPU computes its share of the heads (and as large a
    share of the tokens). Streaming every block costs ``STREAM_TO_COMPUTE`` of one sample's compute per
    crossing (two with CFG two_calls). ``speeds``: relative speeds by device (any unit; a device not named
    runs at the first GPU's speed).
    """
    speeds = speeds or {}
    first = speeds.get(plan.devices[0], 1.0) if plan.devices else 1.0
    speed = [speeds.get(device, first) / first for device in plan.devices] or [1.0]
    blocks = plan.sizes.blocks
    samples = 1 if plan.cfg == "off" else 2
    crossings = 2 if plan.cfg == "two_calls" else 1

    def streaming(streamed: int) -> float:
        return STREAM_TO_COMPUTE * crossings / samples * streamed / blocks

    if plan.strategy in PARALLEL:
        return max(
            max(share / s, streaming(blocks - n))
            for s, share, n in zip(speed, compute_shares(plan), plan.device_resident, strict=True)
        )
    on_gpu = [len(plan.streamed_blocks) + len(plan.resident_blocks) - len(plan.block_devices)]
    on_gpu += [0] * (len(speed) - 1)
    for index in plan.block_devices:
        on_gpu[index] += 1
    compute = sum(count / blocks / s for count, s in zip(on_gpu, speed, strict=True))
    return max(compute, streaming(len(plan.streamed_blocks)))


def compute_shares(plan: Plan) -> tuple[float, ...]:
    """Each GPU's share of a step's compute (by ``plan.devices``): CFG-parallel, one of the two samples each;
    sequence-parallel, its share of the heads (and as large a share of the tokens); otherwise all of it."""
    if plan.strategy == CFG_PARALLEL:
        return (0.5,) * len(plan.devices)
    if plan.strategy == SEQUENCE_PARALLEL:
        return tuple(h / sum(plan.head_shares) for h in plan.head_shares)
    return (1.0,)


def preference(plan: Plan) -> tuple:
    """The order one-GPU and block-split candidates are compared by (larger is better); it also breaks
    ties between parallel candidates that predict the same step (their resident blocks on every GPU)."""
    return (
        sum(plan.device_resident) if plan.device_resident else len(plan.resident_blocks),
        plan.text_encoder == "resident",
        not plan.vae_encode_tiling,
        not plan.vae_tiling,
        -len(plan.devices),
        plan.slots,
    )


def choose_plan(
    found: Sequence[Plan], speeds: Mapping[str, float], image_tokens: int, why_not_parallel: str = ""
) -> Plan | None:
    """The plan to run among ``found`` (plans of one job of ``image_tokens`` per sample), with its reason;
    None when ``found`` is empty.

    The best one-GPU or block-split plan by ``preference`` is the baseline; the parallel candidate with
    the shortest ``relative_step`` replaces it when that is at most ``PARALLEL_GAIN`` of the baseline's.
    ``speeds``: every given GPU's relative speed by device. ``why_not_parallel`` says why no parallel
    candidate was made (a reason's ending when the baseline runs)."""
    parallel = [p for p in found if p.strategy in PARALLEL]
    others = [p for p in found if p.strategy not in PARALLEL]
    baseline = max(others, key=preference) if others else None
    fastest = max(parallel, key=lambda p: (-relative_step(p, speeds), preference(p))) if parallel else None
    if fastest is not None and (
        baseline is None or relative_step(fastest, speeds) <= PARALLEL_GAIN * relative_step(baseline, speeds)
    ):
        return replace(fastest, reason=f"{_what(fastest, image_tokens, speeds)}; {_predicted(fastest, speeds)}")
    if baseline is None:
        return None
    if len(speeds) < 2:
        return replace(baseline, reason=why_not_parallel)
    if fastest is not None:
        gain = f"{1 - PARALLEL_GAIN:.0%}"
        why_not_parallel = f"{fastest.strategy} would predict {relative_step(fastest, speeds):.2f}x, not {gain} shorter"
    ending = f"; {why_not_parallel}" if why_not_parallel else ""
    return replace(baseline, reason=f"{_what(baseline, image_tokens, speeds)}; {_predicted(baseline, speeds)}{ending}")


def _predicted(plan: Plan, speeds: Mapping[str, float]) -> str:
    return f"predicted step {relative_step(plan, speeds):.2f}x one GPU"


def _what(plan: Plan, image_tokens: int, speeds: Mapping[str, float]) -> str:
    """What the GPUs of ``plan`` do, in a few words."""
    blocks, streamed = plan.sizes.blocks, len(plan.streamed_blocks)
    if plan.strategy in PARALLEL:
        count = len(plan.devices)
        each = [blocks - n for n in plan.device_resident]
        streaming = (
            "every block resident on each"
            if not any(each)
            else f"each streaming {each[0]} blocks from the shared host memory"
            if len(set(each)) == 1
            else f"streaming {'/'.join(map(str, each))} blocks from the shared host memory"
        )
        if plan.strategy == CFG_PARALLEL:
            return f"CFG on: each of {count} GPUs computes one sample (prompt / negative prompt), {streaming}"
        tokens = "/".join(str(stop - start) for start, stop in token_spans(image_tokens, plan.head_shares))
        by_speed = " by speed" if len({speeds.get(device, 1.0) for device in plan.devices}) > 1 else ""
        heads = "/".join(map(str, plan.head_shares))
        return f"CFG off: image tokens split {tokens} over {count} GPUs{by_speed} ({heads} heads), {streaming}"
    ring = f", {streamed} streamed through {plan.slots} ring slots on the first" if streamed else ""
    if plan.strategy == ONE_GPU:
        return f"every block fits on the first GPU{ring}" if not streamed else f"no other GPU holds a block{ring}"
    counts = [plan.block_devices.count(i) for i in range(len(plan.devices))]
    return f"{'+'.join(map(str, counts))} blocks resident on {len(counts)} GPUs, run one GPU after the other{ring}"
