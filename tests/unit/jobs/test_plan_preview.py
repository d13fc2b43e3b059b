"""The plan preview's core: sizes from headers equal the engine's measured sizes, the step-time model
matches the H200 benchmark, the preview is the engine's plan, and the last run calibrates the step time."""

from __future__ import annotations

import math

import pytest
import torch
from real_size import plan_many, plan_one
from tiny_files import FOLDER, LAYOUTS, MODELS, TE_FP8, split_files

from optim import DiffusersFolder, LoadRequest, PrecisionSettings, QwenFitError, load_pipeline
from optim.jobs.plan_preview import PreviewSettings, job_shape, preview, same_pipeline
from optim.monitoring.run_record import PhaseStat, RunRecord
from optim.planning.header_sizes import sizes_from_headers
from optim.planning.load_request import describe
from optim.planning.model_sizes import ModelSizes
from optim.planning.planner import Gpu
from optim.planning.step_time import DeviceSpeed, estimate_step, step_flops
from optim.qwen.job_shape import JobShape
from optim.qwen.variants import Variant
from optim.settings import OffloadSettings

CPU = torch.device("cpu")
GIB = 1024**3
EDIT_BF16, EDIT_FP8 = LAYOUTS[0][0], LAYOUTS[1][0]

CASES = [
    (split_files(EDIT_BF16, "edit-2509"), PrecisionSettings()),
    (split_files(EDIT_FP8, "edit-2509", TE_FP8), PrecisionSettings()),  # fp8 as stored, both components
    (split_files(EDIT_BF16, "edit-2509"), PrecisionSettings(transformer="fp8_e4m3fn", text_encoder="int8")),
    (split_files(LAYOUTS[5][0], "layered"), PrecisionSettings(transformer="int8")),  # fp8mixed, then int8
    (DiffusersFolder(MODELS / "diffusers" / FOLDER["layered"]), PrecisionSettings(transformer="nf4")),
]


@pytest.mark.parametrize(("source", "precision"), CASES, ids=lambda c: getattr(c, "name", None) or str(c))
def test_sizes_from_headers_equal_what_the_engine_measures(source, precision):
    request = LoadRequest(source=source, precision=precision)
    predicted = sizes_from_headers(describe(request), precision, CPU)
    loaded = load_pipeline(request)
    try:
        assert predicted == loaded.engine.sizes
    finally:
        loaded.engine.release()


# The real model as the planner sees it (60 blocks, hidden 3072); byte sizes do not enter the FLOP count.
REAL = ModelSizes(
    blocks=60, block_bytes=453 * 2**20, modulation_bytes=int(13.6 * GIB), transformer_rest_bytes=2**28,
    text_units=60, text_unit_bytes=2**28, text_units_bytes=14 * GIB, text_rest_bytes=2**28,
    text_host_bytes=2 * GIB, vae_bytes=2**28, hidden=3072,
)  # fmt: skip
H200 = DeviceSpeed("H200", matmul_flops=806e12, host_to_device_bytes=51.6 * GIB)


def test_step_model_matches_the_h200_benchmark():
    edit = JobShape("edit", 1024, 1024, references=1)
    assert 335e12 < step_flops(REAL, edit) < 350e12  # field notes: ~335 TFLOP
    resident = plan_one(edit, None)
    # bench/results 2026-11-22: resident bf16 0.727 s/step (Edit), 0.881 (Layered 640, 4 layers).
    assert estimate_step(REAL, edit, resident, H200).seconds == pytest.approx(0.727, rel=0.05)
    layered = JobShape("layered", 640, 640, references=0, layers=4)
    assert estimate_step(REAL, layered, plan_one(layered, None), H200).seconds == pytest.approx(0.881, rel=0.05)
    # Streaming everything over a slow link is copy-bound; over the H200's it hides behind compute.
    streamed = plan_one(edit, 7 * GIB, mode="blocks")
    slow = DeviceSpeed("PCIe 3", 806e12, 5 * GIB)
    assert estimate_step(REAL, edit, streamed, slow).seconds > 4
    assert "copy-bound" in estimate_step(REAL, edit, streamed, slow).basis
    assert estimate_step(REAL, edit, streamed, H200).seconds == estimate_step(REAL, edit, resident, H200).seconds
    # Compressed weights are expanded before each matmul: a little slower.
    assert estimate_step(REAL, edit, resident, H200, "nf4").seconds > estimate_step(REAL, edit, resident, H200).seconds


def test_step_model_matches_the_two_gpu_lightning_benchmark():
    """bench/results/several_gpus_h200x2_2026-11-30/text_on_first_gpu (778 TFLOP/s measured): CFG off,
    Edit 1024, one GPU 0.3686 s/step, two GPUs sequence-parallel 0.2195. The other GPU queues no text
    kernels, so the queuing thread pays half a block's fixed cost for it, not a whole one (+10% before)."""
    lightning = JobShape("edit", 1024, 1024, references=1, cfg=False, steps=8)
    speed = DeviceSpeed("H200", matmul_flops=778e12, host_to_device_bytes=51.6 * GIB)
    one = estimate_step(REAL, lightning, plan_one(lightning, None), speed).seconds
    two_plan = plan_many(lightning, [Gpu("cuda:0", None), Gpu("cuda:1", None)])
    assert two_plan.strategy == "sequence-parallel"
    two = estimate_step(REAL, lightning, two_plan, speed).seconds
    assert one == pytest.approx(0.3686, rel=0.08)
    assert two == pytest.approx(0.2195, rel=0.05)


def test_the_previews_automatic_size_is_the_runs():
    """One rule for Edit's automatic output size: the preview's job is the run's (a test image of
    each aspect through the run function's own ``output_size``)."""
    from PIL import Image

    from optim.jobs.edit import EditJob, output_size

    for width, height in ((640, 480), (1920, 1080), (300, 600), (900, 300), (512, 512)):
        settings = PreviewSettings(model=EDIT_BF16, aspect=width / height)
        job = job_shape(settings, Variant.EDIT_2509)
        assert (job.width, job.height) == output_size(Image.new("RGB", (width, height)), EditJob(prompt="x"))


def settings(**fields) -> PreviewSettings:
    return PreviewSettings(model=EDIT_BF16, **fields)


def test_preview_is_the_engines_plan_and_the_last_run_calibrates_it():
    source = split_files(EDIT_BF16, "edit-2509")
    wanted = settings(width=256, height=256, steps=2)
    answer = preview(wanted, source, CPU)
    loaded = load_pipeline(LoadRequest(source=source))
    try:
        job = JobShape("edit", 256, 256, references=1, steps=2)
        engine_plan = loaded.engine.plan_for(job)
    finally:
        loaded.engine.release()
    assert answer.plan.predicted_peak_bytes == engine_plan.predicted_peak_bytes
    assert answer.plan.phase_peaks == engine_plan.phase_peaks
    assert answer.job == job and answer.calibration is None and answer.plan.seconds_per_step > 0
    # A run of the same model and job took twice as long as predicted: the preview says so.
    measured = 2 * answer.step.seconds
    last = RunRecord(EDIT_BF16, 2, (PhaseStat("denoise", 2 * measured, 0, 0),), "plan", job=job, device="cpu")
    calibrated = preview(wanted, source, CPU, last_run=last)
    assert calibrated.plan.seconds_per_step == pytest.approx(measured, rel=1e-6)
    assert calibrated.calibration.factor == pytest.approx(2.0, rel=1e-6)
    assert f"predicted step: {measured:.2f} s" in calibrated.plan.describe()


def test_no_step_time_while_a_run_holds_the_device(monkeypatch):
    import optim.jobs.plan_preview as plan_preview

    monkeypatch.setattr(plan_preview, "known_device_speed", lambda device, dtype: None)  # never measured
    answer = preview(settings(), split_files(EDIT_BF16, "edit-2509"), CPU, may_measure_speed=lambda: False)
    assert answer.plan.seconds_per_step is None and answer.plan.predicted_peak_bytes > 0
    assert any("measured once no run holds it" in note for note in answer.notes)


def test_lightning_lora_turns_cfg_off_in_the_preview():
    source = split_files(EDIT_BF16, "edit-2509")
    with_cfg = preview(settings(width=256, height=256), source, CPU)
    lightning = preview(settings(width=256, height=256, lora="qwen-Lightning-4steps.safetensors"), source, CPU)
    assert with_cfg.job.cfg is True and lightning.job.cfg is False
    assert lightning.plan.predicted_peak_bytes <= with_cfg.plan.predicted_peak_bytes
    assert math.isfinite(lightning.plan.seconds_per_step)


def test_the_preview_counts_and_lists_the_lora_stack(tmp_path):
    """The stack's factors stay on the GPU: the plan lists each LoRA with strength, rank and MiB, and its
    predicted peak grows by their bytes."""
    from tiny_files import block_layers, layer_shapes, write_lora

    from optim import LoraChoice, LoraStack

    shapes = layer_shapes(MODELS / "diffusion_models" / EDIT_BF16)
    write_lora(tmp_path / "a.safetensors", "kohya", block_layers(shapes, "attn"), 16, 8.0, 1)
    write_lora(tmp_path / "Lightning-4steps.safetensors", "lightx2v", block_layers(shapes, "mlp"), 8, 8.0, 2)
    stack = LoraStack(
        (LoraChoice(tmp_path / "a.safetensors", 0.5), LoraChoice(tmp_path / "Lightning-4steps.safetensors"))
    )
    source = split_files(EDIT_BF16, "edit-2509")
    without = preview(settings(width=256, height=256, cfg_scale=1.0), source, CPU)
    answer = preview(settings(width=256, height=256), source, CPU, loras=stack)
    assert answer.job.cfg is False  # the Lightning LoRA of the stack
    lines = answer.plan.loras.lines
    assert [(line.name, line.strength, line.rank) for line in lines] == [
        ("a.safetensors", 0.5, 16),
        ("Lightning-4steps.safetensors", 1.0, 8),
    ]
    assert answer.plan.predicted_peak_bytes == without.plan.predicted_peak_bytes + answer.plan.loras.resident_bytes
    assert "LoRAs: a.safetensors x0.5 (rank 16" in answer.plan.describe()


def test_a_loaded_pipeline_keeps_the_budget_it_was_planned_with():
    source = split_files(EDIT_BF16, "edit-2509")
    wanted = settings(offload=OffloadSettings(vram_budget="auto"))
    answer = preview(wanted, source, CPU, loaded_gpus=(Gpu("cpu", 7 * GIB),))
    assert answer.plan.budget_bytes == 7 * GIB
    assert any("fixed when this model loaded" in note for note in answer.plan.notes)
    assert same_pipeline(wanted, source, LoadRequest(source=source))
    assert not same_pipeline(
        wanted, source, LoadRequest(source=source, precision=PrecisionSettings(transformer="int8"))
    )
    # Regression: the multi-GPU settings are part of what was loaded (the preview once dropped them,
    # so a multi-GPU preset never matched its loaded pipeline and re-read the "auto" budget).
    several = settings(offload=OffloadSettings(gpus="all", multi_gpu="split"))
    assert same_pipeline(several, source, LoadRequest(source=source, offload=several.offload))
    assert not same_pipeline(several, source, LoadRequest(source=source))


def test_the_preview_plans_over_the_gpus_it_is_given(monkeypatch):
    """Two 24 GiB GPUs described to the planner: the preview shows the multi-GPU plan the loader would
    make (the tiny model fits twice: CFG-parallel, the negative prompt on the second GPU)."""
    import optim.jobs.plan_preview as plan_preview

    described = (Gpu("cuda:0", 24 * GIB), Gpu("cuda:1", 24 * GIB))
    monkeypatch.setattr(plan_preview, "resolve_gpus", lambda offload, device, **_: (described, ()))
    answer = preview(settings(offload=OffloadSettings(gpus="all")), split_files(EDIT_BF16, "edit-2509"), CPU)
    assert answer.plan.devices == ("cuda:0", "cuda:1") and answer.plan.strategy == "CFG-parallel"
    assert "computes the negative prompt's sample" in answer.plan.describe()


def test_the_preview_predicts_every_speed_rung_and_shows_the_chosen_one():
    source = split_files(EDIT_FP8, "edit-2509")
    answer = preview(
        PreviewSettings(model=EDIT_FP8, precision=PrecisionSettings(speed="fastest"), width=256, height=256, steps=6),
        source,
        CPU,
    )
    rungs = dict(answer.rungs)
    assert set(rungs) == {"exact", "fast", "fastest"}  # the CPU runs every rung's arithmetic
    assert rungs["fastest"] == pytest.approx(rungs["fast"] * 4 / 6, rel=1e-6)  # 4 of 6 steps run the blocks
    assert answer.plan.seconds_per_step == pytest.approx(rungs["fastest"], rel=1e-6)
    assert "speed fastest: fp8 W8A8" in answer.plan.describe()


def test_the_preview_refuses_a_rung_this_gpu_cannot_run(monkeypatch):
    import optim.jobs.plan_preview as plan_preview

    def gtx_1080(offload, device, **_):
        return (Gpu("cuda:0", 7 * GIB, (6, 1)),), ()

    monkeypatch.setattr(plan_preview, "resolve_gpus", gtx_1080)
    with pytest.raises(QwenFitError, match="int8 tensor cores"):
        preview(settings(precision=PrecisionSettings(speed="fast")), split_files(EDIT_BF16, "edit-2509"), CPU)


def test_the_preview_shows_sequence_parallelism_and_why(monkeypatch):
    """A CFG-off job (Lightning) on two GPUs: the plan splits the image tokens and says why; with CFG the
    two GPUs compute one sample each."""
    import optim.jobs.plan_preview as plan_preview

    described = (Gpu("cuda:0", 24 * GIB), Gpu("cuda:1", 24 * GIB))
    monkeypatch.setattr(plan_preview, "resolve_gpus", lambda offload, device, **_: (described, ()))
    source = split_files(EDIT_BF16, "edit-2509")
    offload = OffloadSettings(gpus="all")
    lightning = preview(settings(offload=offload, lora="qwen-Lightning-4steps.safetensors"), source, CPU).plan
    assert lightning.strategy == "sequence-parallel" and lightning.head_shares == (1, 1)
    assert lightning.reason.startswith("CFG off: image tokens split ") and "over 2 GPUs (1/1 heads)" in lightning.reason
    assert f"GPUs: sequence-parallel ({lightning.reason})" in lightning.describe()
    with_cfg = preview(settings(offload=offload), source, CPU).plan
    assert with_cfg.strategy == "CFG-parallel" and with_cfg.reason.startswith("CFG on: each of 2 GPUs computes")


def test_on_a_cpu_only_host_the_placement_names_host_ram_not_a_gpu():
    """The badge's placement line (issue 32): with no GPU it said "2/2 blocks on GPU" next to "no GPU: host
    RAM". The CPU runs everything from host RAM, and the line says so."""
    answer = preview(settings(width=256, height=256), split_files(EDIT_BF16, "edit-2509"), CPU)
    blocks = answer.sizes.blocks
    assert answer.placement == f"no GPU: all {blocks} blocks in host RAM, text encoder {answer.plan.text_encoder}, " \
        f"VAE tiling {'on' if answer.plan.vae_tiling else 'off'}"  # fmt: skip
    assert "on GPU" not in answer.placement


def test_on_a_gpu_the_placement_counts_the_blocks_it_holds_and_streams(monkeypatch):
    import optim.jobs.plan_preview as plan_preview

    one_gpu = (Gpu("cuda:0", 24 * GIB),)
    monkeypatch.setattr(plan_preview, "resolve_gpus", lambda offload, device, **_: (one_gpu, ()))
    answer = preview(settings(width=256, height=256), split_files(EDIT_BF16, "edit-2509"), CPU)
    blocks = answer.sizes.blocks
    assert answer.placement.startswith(f"{blocks}/{blocks} blocks on GPU, text encoder ")
    plan = answer.plan
    streaming = plan_preview.replace(
        plan, resident_blocks=plan.resident_blocks[:1], streamed_blocks=tuple(range(1, blocks))
    )
    assert plan_preview.placement_summary(streaming, one_gpu).startswith(
        f"1/{blocks} blocks on GPU ({blocks - 1} streamed from host RAM), "
    )
