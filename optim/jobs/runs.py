"""What every generation shares: seeding, per-step progress, VAE settings, timing."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any, TypeVar

import torch

from ..errors import QwenFitError
from ..execution.loaded_pipeline import LoadedPipeline, release_memory
from ..execution.whole_model_offload import apply_vae_switches
from ..monitoring.run_record import PhaseTracker, RunRecord
from ..qwen.job_limits import MAX_STEPS
from ..qwen.job_shape import JobShape

log = logging.getLogger("qwenfit")

# Called after every denoising step with (steps done, total steps). A host's progress bar
# lives here; raising from it (ComfyUI's Cancel does) stops the run within one step.
StepCallback = Callable[[int, int], None]
# Called with a phase's name as it starts ("load", "encode", "denoise", "decode"); raising from it
# cancels the run there, with nothing half-done left behind.
Checkpoint = Callable[[str], None]
T = TypeVar("T")


def check_steps(steps: int, loaded: LoadedPipeline | None = None) -> None:
    """Refuse step counts outside 1..MAX_STEPS, and 1 step where the scheduler cannot do it."""
    if not 1 <= steps <= MAX_STEPS:
        raise QwenFitError(
            f"steps={steps} is out of range; use 1 to {MAX_STEPS} (40-50 is typical, 4-8 with Lightning)."
        )
    terminal = loaded is not None and loaded.run_scheduler_config.get("shift_terminal")
    if steps == 1 and terminal:
        # One sigma stretched to a terminal shift divides zero by zero: the image would be NaN.
        raise QwenFitError(
            "1 step is not possible with this model's scheduler (terminal shift); use 2 or more, "
            "or a Lightning LoRA, which runs from 4 steps."
        )


def check_finite(images: torch.Tensor, loaded: LoadedPipeline) -> None:
    """Refuse to hand back NaN/inf pixels: name the likely cause instead of a black image."""
    if not torch.isfinite(images).all():
        fp16 = any("fp16" in c.dtype.split("+") for c in loaded.components)
        hint = (
            "this model overflows in fp16: set QwenFit Precision to auto or bf16"
            if fp16
            else "try more steps, or bf16/fp32 precision"
        )
        raise QwenFitError(f"the model produced invalid pixels (NaN or infinite): {hint}.")


def generator_for(seed: int) -> torch.Generator:
    """A CPU generator: the same seed gives the same noise on any device."""
    return torch.Generator(device="cpu").manual_seed(seed)


def step_callback(
    total: int, on_step: StepCallback | None, tracker: PhaseTracker | None = None
) -> Callable[..., dict[str, Any]]:
    """Adapt a (done, total) callback to diffusers' ``callback_on_step_end``."""

    def callback(_pipeline: Any, step: int, _timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        if tracker is not None:
            tracker.step_done(step + 1, total)
        if on_step is not None:
            on_step(step + 1, total)
        return tensors

    return callback


@contextmanager
def prepared(loaded: LoadedPipeline, job: JobShape, checkpoint: Checkpoint | None = None) -> Iterator[PhaseTracker]:
    """Plan and place for ``job``, set the VAE handling and time the phases; always leave the GPU
    cache clean and the streaming rings freed, also after an error. ``checkpoint`` is called as each
    phase starts (encode, denoise, decode); raising from it (ComfyUI's Cancel) stops the run there."""
    if checkpoint is not None:
        checkpoint("encode")
    plan = loaded.prepare(job)
    loaded.apply_loras()  # this view's LoRA stack and the scheduler it needs (nothing reloads)
    if loaded.engine is not None:
        running = loaded.engine.running()
    else:
        apply_vae_switches(loaded.pipeline, plan)
        running = nullcontext()

    def after_the_run() -> str:
        """What the run did beyond its plan, and how the load went (its background reads included)."""
        notes = loaded.engine.run_notes() if loaded.engine is not None else ""
        return "\n  ".join(line for line in (notes, *loaded.describe_load().splitlines()) if line)

    tracker = PhaseTracker(
        loaded.device, job.steps, loaded.name, plan.describe(), job, plan.phase_peaks, checkpoint,
        afterwards=after_the_run,
    )  # fmt: skip
    hook = loaded.pipeline.transformer.register_forward_pre_hook(tracker.denoising_starts)
    stopped_by: BaseException | None = None
    try:
        with torch.inference_mode(), running:
            yield tracker
    except BaseException as stop:  # Cancel (ComfyUI's interrupt), an error: cleaned up below, then raised
        stopped_by = stop
        raise
    finally:
        phase = tracker.current_phase
        tracker.abandon()  # no-op after finish(); tells observers when the run stopped early
        hook.remove()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if stopped_by is not None:
            # Users who press Cancel read the server log to know what was given back.
            log.info(
                "QwenFit: %s stopped during %s (%s); cleaned up: streaming buffers freed, cached GPU blocks "
                "returned; %s; the loaded model stays for the next run",
                loaded.name, phase or "its end", type(stopped_by).__name__, _gpu_memory_now(loaded.device),
            )  # fmt: skip


def _gpu_memory_now(device: torch.device) -> str:
    if device.type != "cuda":
        return "no GPU memory in use (CPU run)"
    return f"{torch.cuda.memory_allocated(device) / 2**30:.2f} GiB of GPU memory allocated now"


class Stopwatch:
    """Wall-clock seconds since creation."""

    def __init__(self) -> None:
        self._start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self._start


def cfg_for(
    loaded: LoadedPipeline, true_cfg_scale: float, negative_prompt: str | None
) -> tuple[float, str | None, str]:
    """(scale, negative prompt, note): a Lightning LoRA anywhere in the stack turns CFG off, as it was
    distilled without it."""
    if not math.isfinite(true_cfg_scale) or true_cfg_scale < 0:
        raise QwenFitError(f"true_cfg_scale={true_cfg_scale} is not usable; use 1 (CFG off) to 10 (4 is typical).")
    lightning = loaded.lightning
    if lightning is None:
        return true_cfg_scale, negative_prompt, ""
    note = f"Lightning LoRA {lightning.path.name}: scheduler shift log(3), no terminal shift, CFG off"
    if lightning.lightning_steps:
        note += f"; made for {lightning.lightning_steps} steps"
    return 1.0, None, note


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:200]


def run_with_recovery(
    loaded: LoadedPipeline,
    job: JobShape,
    call: Callable[[PhaseTracker], T],
    checkpoint: Checkpoint | None = None,
) -> tuple[T, RunRecord, str]:
    """Run ``call`` (the pipeline call) under the plan for ``job``: (its result, the run's record, a
    note). On out-of-memory everything the run holds is freed, the engine re-plans one step leaner
    (a smaller card's budget, VAE tiling on) and the run is tried once more; the note says so. A
    second out-of-memory raises QwenFitError saying what was tried and what to change."""

    def attempt() -> tuple[T, RunRecord]:
        with prepared(loaded, job, checkpoint) as tracker:
            result = call(tracker)
            return result, tracker.finish()

    try:
        return (*attempt(), "")
    except torch.OutOfMemoryError as error:
        first = _first_line(error)
    # Retried outside the except block: the traceback's frames (and the tensors they hold) are gone.
    release_memory()
    engine = loaded.engine
    if engine is None:
        raise QwenFitError(
            f"out of GPU memory with diffusers' whole-model offload ({first}). Set QwenFit Offload's mode to "
            "auto with your card's VRAM budget: the planner streams what does not fit."
        )
    before = engine.describe_peak()
    note = engine.lean_down(job, loaded.vae)
    log.warning("QwenFit: out of GPU memory (%s) with %s; %s; trying once more", first, before, note)
    try:
        result, record = attempt()
    except torch.OutOfMemoryError as error:
        second = _first_line(error)
    else:
        return result, record, f"note: out of GPU memory with {before}; {note}; the retry succeeded"
    release_memory()
    card = engine.smaller_card()
    fix = f"pick VRAM budget '{card}' or smaller" if card else "pick a smaller VRAM budget or a smaller job"
    raise QwenFitError(
        f"out of GPU memory twice: first with {before}, then {note} ({second}). Something else is using "
        f"this GPU, or its free memory is smaller than the budget: close other GPU programs, or {fix} on "
        "QwenFit Offload."
    )
