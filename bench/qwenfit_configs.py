"""QwenFit's presets as benchmark configurations (see bench/baselines.py for the interface).

Each preset runs the pack's engine (planner, block streaming, precomputed modulation, batched CFG,
prompt cache) on the shared real-size components. A card size is emulated with
``torch.cuda.set_per_process_memory_fraction``: the allocator then refuses anything above the
usable memory of that card, so a plan that does not fit fails here as it would at home.

Precisions other than bf16 swap the block Linears for compressed ones for the time of the
configuration (quantized on the GPU, stored on the host as the loader would have stored them from
fp8 files) and swap the bf16 originals back on release.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from optim.execution.device_speed import device_speed
from optim.execution.devices import can_compile, indexed, usable_bytes
from optim.execution.engine import EngineOptions, PipelineEngine
from optim.execution.host_arena import pinned_bytes
from optim.files.fp8_layouts import Fp8Layout, Fp8Weight, quantize_absmax
from optim.planning.planner import Gpu
from optim.planning.speed_ladder import choose_arithmetic
from optim.planning.step_time import estimate_step
from optim.quant.compressed_linear import enable_fast_blocks
from optim.quant.format_registry import quantized_on_load
from optim.quant.fp8 import Fp8Linear
from optim.quant.fp8_scope import FP8_SCOPES
from optim.qwen.job_shape import JobShape
from optim.qwen.variants import Variant
from optim.settings import FP8, OffloadSettings

from .baselines import Skip, free_device_memory
from .realsize import make_pipeline


def _quantized(layer: nn.Linear, kind: str, device: torch.device) -> nn.Module:
    weight = layer.weight.data.to(device)
    bias = None if layer.bias is None else layer.bias.data
    if kind == "fp8":  # as the loader stores a bf16 file planned for fp8, quantized on the GPU for speed
        data, scale = quantize_absmax(weight)
        return Fp8Linear(Fp8Weight(data.cpu(), scale.cpu(), Fp8Layout.SCALED), bias)
    return quantized_on_load(kind).layer_class(weight, None if bias is None else bias.to(device)).to("cpu")


def swap_linears(module: nn.Module, keep, kind: str, device: torch.device) -> list[tuple[nn.Module, str, nn.Module]]:
    """Replace the kept Linears by ``kind`` ones; returns what to put back."""
    swaps = []
    for name, layer in list(module.named_modules()):
        if isinstance(layer, nn.Linear) and keep(name):
            parent_name, _, child = name.rpartition(".")
            parent = module.get_submodule(parent_name) if parent_name else module
            setattr(parent, child, _quantized(layer, kind, device))
            swaps.append((parent, child, layer))
    return swaps


def job_shape(job: Any) -> JobShape:
    if job.variant is Variant.LAYERED:
        return JobShape("layered", job.size, job.size, references=0, layers=job.layers, steps=job.steps)
    return JobShape("edit", job.size, job.size, references=1, steps=job.steps, cfg=job.true_cfg_scale > 1)


class QwenFitPreset:
    """One preset: a VRAM budget (card size), an offload mode and a storage precision."""

    def __init__(self, key: str, name: str, budget: str, mode: str = "auto", precision: str = "bf16",
                 attention_backend: str | None = None, compile_blocks: bool = False,
                 cfg: str = "batched", monitor: bool = False, gpus: int = 1, multi_gpu: str = "auto",
                 gpu_cap_gib: float | tuple[float, ...] | None = None, speed: str = "exact",
                 compare_to: str | None = None) -> None:  # fmt: skip
        self.key, self.name = key, name
        # The speed rung (optim/planning/speed_ladder.py); fast rows name the exact row on the same weights.
        self.speed, self.compare_to = speed, compare_to
        self.predicted_seconds_per_step: float | None = None
        self.step_basis = ""
        # Several GPUs: how many, the strategy, and a cap per GPU in GiB (None: the budget's figure; a tuple:
        # each GPU's, the first GPU's first, for mismatched cards).
        self.gpus, self.multi_gpu, self.gpu_cap_gib = gpus, multi_gpu, gpu_cap_gib
        self._devices: list[torch.device] = []
        self.predicted_device_peaks: dict[str, int] = {}
        self.budget, self.mode, self.precision = budget, mode, precision
        self.attention_backend = attention_backend
        self.compile_blocks = compile_blocks
        self.cfg = cfg
        self.monitor = monitor  # the live panel's sampler running through the run (its cost shows as s/step)
        self._sampler = None
        self.predicted_peak_bytes: int | None = None
        self.pinned_note = "counted: page-locked arenas of the engine (exact bytes)"
        self.plan_text = ""
        self._engine: PipelineEngine | None = None
        self._running = None
        self._swaps: list[tuple[nn.Module, str, nn.Module]] = []

    def prepare(self, components: dict[str, Any], device: torch.device) -> Any:
        device = torch.device(device)
        if self.precision != "bf16":
            self._swaps = swap_linears(components["transformer"], FP8_SCOPES["transformer"], self.precision, device)
            if self.precision != "fp8_e4m3fn_fast":  # fp8 matmuls speed the transformer; the encoder runs once
                self._swaps += swap_linears(
                    components["text_encoder"], FP8_SCOPES["text_encoder"], self.precision, device
                )
        budget = usable_bytes(self.budget, device)
        caps = self.gpu_cap_gib if isinstance(self.gpu_cap_gib, tuple) else (self.gpu_cap_gib,) * self.gpus
        budgets = [budget if cap is None else int(cap * 2**30) for cap in caps]
        capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
        gpus: tuple[Gpu, ...] = (Gpu(str(indexed(device)), budgets[0], capability),)
        if self.gpus > 1:
            if device.type != "cuda" or torch.cuda.device_count() < self.gpus:
                raise Skip(f"needs {self.gpus} GPUs")
            first = device.index if device.index is not None else torch.cuda.current_device()
            others = [i for i in range(torch.cuda.device_count()) if i != first][: self.gpus - 1]
            self._devices = [torch.device("cuda", i) for i in [first, *others]]
            gpus = tuple(Gpu(str(d), b, capability) for d, b in zip(self._devices, budgets, strict=True))
        elif device.type == "cuda":
            self._devices = [indexed(device)]
        for gpu, cap in zip(self._devices, budgets, strict=False):
            if cap is not None:
                total = torch.cuda.get_device_properties(gpu).total_memory
                torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total), gpu)
        pipeline = make_pipeline(components, components["variant"])
        pipeline.set_progress_bar_config(disable=True)
        offload = OffloadSettings(
            mode=self.mode, cfg=self.cfg, gpus="all" if self.gpus > 1 else "one", multi_gpu=self.multi_gpu
        )
        storage = {"fp8": FP8, "bf16": "bf16"}.get(self.precision, self.precision)
        arithmetic = choose_arithmetic(self.speed, storage, [g.capability for g in gpus])
        if arithmetic.store_as is not None:  # bf16 weights quantized for the 8-bit product, as the loader does
            self._swaps += swap_linears(
                components["transformer"], FP8_SCOPES["transformer"], arithmetic.store_as, device
            )
        if arithmetic.kind != "expanded":
            enable_fast_blocks(components["transformer"].transformer_blocks, arithmetic.kind)
        compiled = self.compile_blocks or (arithmetic.compiled and can_compile(device))
        options = EngineOptions(offload, gpus, self.attention_backend, compiled, arithmetic)
        self._engine = PipelineEngine(pipeline, device, options)
        job = job_shape(components["job"])
        plan = self._engine.prepare(job)
        if device.type == "cuda":
            estimate = estimate_step(
                self._engine.sizes, job, plan, device_speed(device, torch.bfloat16), storage, steady=True
            )
            self.predicted_seconds_per_step, self.step_basis = estimate.seconds, estimate.basis
        self.predicted_peak_bytes = plan.predicted_peak_bytes
        self.predicted_device_peaks = dict(plan.device_peaks)
        for gpu in self._devices[1:]:  # the meter resets the first GPU's peak itself
            torch.cuda.reset_peak_memory_stats(gpu)
        self.plan_text = plan.describe()
        print(self.plan_text, flush=True)
        self._running = self._engine.running()
        self._running.__enter__()
        if self.monitor:
            from optim.monitoring.memory_sampler import MemorySampler

            self._sampler = MemorySampler(interval_s=0.25)
            self._sampler.start()
        return pipeline

    def extra_measurements(self) -> dict[str, Any]:
        """Every other GPU's peak over the run, and what the plan predicted for each."""
        extra: dict[str, Any] = {"speed": self.speed, "compare_to": self.compare_to}
        if self.predicted_seconds_per_step is not None:
            extra.update(predicted_seconds_per_step=self.predicted_seconds_per_step, step_basis=self.step_basis)
        if self._engine is not None:
            extra["run_notes"] = self._engine.run_notes()
        if len(self._devices) < 2:
            return extra
        peaks = {}
        for gpu in self._devices[1:]:
            torch.cuda.synchronize(gpu)
            peaks[str(gpu)] = torch.cuda.max_memory_reserved(gpu)
        return {**extra, "other_gpu_peaks": peaks, "predicted_device_peaks": self.predicted_device_peaks}

    def release(self, pipeline: Any) -> None:
        if self._sampler is not None:
            self._sampler.stop()
            print(f"memory sampler ({self._sampler.source}): {len(self._sampler.samples())} samples", flush=True)
            self._sampler = None
        if self._running is not None:
            self._running.__exit__(None, None, None)
            self._running = None
        if self._engine is not None:
            self._engine.release()
            self._engine = None
        for parent, child, original in reversed(self._swaps):
            setattr(parent, child, original)
        self._swaps = []
        for gpu in self._devices:
            torch.cuda.set_per_process_memory_fraction(1.0, gpu)
        self._devices = []
        free_device_memory()

    def pinned_bytes(self) -> int | None:
        return pinned_bytes()


def qwenfit_configurations() -> list[QwenFitPreset]:
    """The presets the README's table reports, fastest first."""
    return [
        QwenFitPreset("qf-fastest", "QwenFit fastest (no budget, bf16)", "unlimited", mode="none"),
        QwenFitPreset(
            "qf-fastest-compiled", "QwenFit fastest, compiled blocks", "unlimited", "none", compile_blocks=True
        ),
        QwenFitPreset(
            "qf-fastest-fp8mm-compiled",
            "QwenFit fastest, fp8 matmuls, compiled blocks",
            "unlimited",
            "none",
            "fp8_e4m3fn_fast",
            compile_blocks=True,
        ),
        QwenFitPreset("qf-fastest-fp8mm", "QwenFit fastest, fp8 matmuls", "unlimited", "none", "fp8_e4m3fn_fast"),
        QwenFitPreset(
            "qf-fastest-cudnn", "QwenFit fastest, cuDNN attention", "unlimited", "none", "bf16", "_native_cudnn"
        ),
        # The speed ladder (issue 15): each fast row names the exact row on the same weights.
        QwenFitPreset("qf-fastest-fp8", "QwenFit no budget, fp8 weights, exact", "unlimited", "none", "fp8"),
        QwenFitPreset(
            "qf-fastest-fast",
            "QwenFit no budget, fast (fp8 weights, fp8 products)",
            "unlimited",
            "none",
            "fp8",
            speed="fast",
            compare_to="qf-8gb-fp8",
        ),
        QwenFitPreset(
            "qf-fastest-fastest",
            "QwenFit no budget, fastest (fp8, step cache)",
            "unlimited",
            "none",
            "fp8",
            speed="fastest",
            compare_to="qf-8gb-fp8",
        ),
        QwenFitPreset("qf-fastest-int8", "QwenFit no budget, int8 weights, exact", "unlimited", "none", "int8"),
        QwenFitPreset(
            "qf-fastest-fast-int8",
            "QwenFit no budget, fast (int8 weights, int8 products)",
            "unlimited",
            "none",
            "int8",
            speed="fast",
            compare_to="qf-8gb-int8",
        ),
        QwenFitPreset(
            "qf-8gb-fast",
            "QwenFit 8 GB fast preset (fp8 weights, fp8 products)",
            "8 GB",
            precision="fp8",
            speed="fast",
            compare_to="qf-8gb-fp8",
        ),
        QwenFitPreset(
            "qf-8gb-fast-int8",
            "QwenFit 8 GB fast preset (int8 weights, int8 products)",
            "8 GB",
            precision="int8",
            speed="fast",
            compare_to="qf-8gb-int8",
        ),
        QwenFitPreset(
            "qf-8gb-fastest",
            "QwenFit 8 GB fastest (fp8, step cache)",
            "8 GB",
            precision="fp8",
            speed="fastest",
            compare_to="qf-8gb-fp8",
        ),
        QwenFitPreset(
            "qf-24gb-fast",
            "QwenFit 24 GB fast preset (fp8 weights, fp8 products)",
            "24 GB",
            precision="fp8",
            speed="fast",
            compare_to="qf-8gb-fp8",
        ),
        QwenFitPreset("qf-24gb", "QwenFit 24 GB preset (bf16)", "24 GB"),
        QwenFitPreset("qf-8gb", "QwenFit 8 GB preset (bf16 weights)", "8 GB"),
        QwenFitPreset("qf-8gb-fp8", "QwenFit 8 GB preset (fp8 weights)", "8 GB", precision="fp8"),
        QwenFitPreset("qf-8gb-int8", "QwenFit 8 GB preset (int8 weights)", "8 GB", precision="int8"),
        QwenFitPreset("qf-8gb-nf4", "QwenFit 8 GB preset (nf4 weights)", "8 GB", precision="nf4"),
        QwenFitPreset(
            "qf-fastest-two-calls", "QwenFit no budget, CFG as two calls", "unlimited", "none", cfg="two_calls"
        ),
        QwenFitPreset("qf-8gb-two-calls", "QwenFit 8 GB preset, CFG as two calls", "8 GB", cfg="two_calls"),
        QwenFitPreset(
            "qf-fastest-interleaved",
            "QwenFit no budget, CFG interleaved (exact)",
            "unlimited",
            "none",
            cfg="interleaved",
        ),
        QwenFitPreset("qf-8gb-interleaved", "QwenFit 8 GB preset, CFG interleaved (exact)", "8 GB", cfg="interleaved"),
        QwenFitPreset("qf-8gb-monitored", "QwenFit 8 GB preset, live memory sampler on", "8 GB", monitor=True),
        # Several GPUs (issue 7): against qf-fastest / qf-fastest-interleaved on one GPU.
        QwenFitPreset(
            "qf-2gpu-cfg-parallel",
            "QwenFit 2 GPUs, CFG-parallel (bf16)",
            "unlimited",
            "none",
            gpus=2,
            multi_gpu="cfg_parallel",
        ),  # fmt: skip
        QwenFitPreset(
            "qf-2gpu-split-24gib",
            "QwenFit 2 GPUs capped at 24 GiB each, block split (bf16)",
            "unlimited",
            gpus=2,
            multi_gpu="split",
            gpu_cap_gib=24.0,
        ),  # fmt: skip
        QwenFitPreset("qf-2gpu-8gb", "QwenFit 2 x 8 GB preset, block split + streaming (bf16)", "8 GB", gpus=2),
        # Issue 20: sequence parallelism (CFG off), CFG-parallel with streaming replicas, mismatched cards.
        QwenFitPreset(
            "qf-2gpu-sequence",
            "QwenFit 2 GPUs, sequence-parallel (bf16)",
            "unlimited",
            "none",
            gpus=2,
            multi_gpu="sequence_parallel",
            compare_to="qf-fastest",
        ),  # fmt: skip
        QwenFitPreset(
            "qf-2gpu-sequence-compiled",
            "QwenFit 2 GPUs, sequence-parallel, compiled blocks (bf16)",
            "unlimited",
            "none",
            compile_blocks=True,
            gpus=2,
            multi_gpu="sequence_parallel",
            compare_to="qf-fastest-compiled",
        ),  # fmt: skip
        QwenFitPreset(
            "qf-2gpu-8gb-fp8",
            "QwenFit 2 x 8 GB, CFG-parallel, each streaming (fp8 weights)",
            "8 GB",
            precision="fp8",
            gpus=2,
            multi_gpu="auto",
            compare_to="qf-8gb-fp8",
        ),  # fmt: skip
        QwenFitPreset("qf-24gb-fp8", "QwenFit 24 GB preset (fp8 weights)", "24 GB", precision="fp8"),
        QwenFitPreset(
            "qf-2gpu-24-8-fp8",
            "QwenFit 24 GB + 8 GB cards, auto (fp8 weights)",
            "24 GB",
            precision="fp8",
            gpus=2,
            gpu_cap_gib=(22.0, 7.0),
            compare_to="qf-24gb-fp8",
        ),  # fmt: skip
        QwenFitPreset(
            "qf-2gpu-stream-all",
            "QwenFit 2 GPUs, CFG-parallel, every block streamed on each (bf16)",
            "8 GB",
            mode="blocks",
            gpus=2,
            multi_gpu="cfg_parallel",
        ),  # fmt: skip
        # Every block streamed: the smoke check of the streaming path on small models.
        QwenFitPreset("qf-stream-all", "QwenFit every block streamed (bf16)", "8 GB", mode="blocks"),
    ]
