"""Benchmark results as JSON (every raw number) and as a Markdown table (one row per job and configuration).

A result row is a plain dict written by ``bench/run_bench.py``; this module derives the comparisons
that need other rows (s/step against the resident reference) and formats the table.
"""

from __future__ import annotations

import datetime
import json
import platform
from pathlib import Path
from typing import Any

import torch

GIB = 1024**3


def environment(device: torch.device | str) -> dict[str, Any]:
    """Versions, GPU and date, for the report header."""
    import diffusers
    import transformers

    device = torch.device(device)
    cuda = device.type == "cuda" and torch.cuda.is_available()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if cuda else None,
        "gpu_total_bytes": torch.cuda.get_device_properties(device).total_memory if cuda else None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


def latent_deviation(latents: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """Relative L2 (||a - b|| / ||b||) and max abs difference of two latent tensors, in float64."""
    a, b = latents.double(), reference.double()
    if a.shape != b.shape:
        raise ValueError(f"latent shapes differ: {tuple(a.shape)} vs reference {tuple(b.shape)}")
    diff = a - b
    return {
        "latent_rel_l2": float(diff.norm() / b.norm()) if b.norm() > 0 else float("nan"),
        "latent_max_abs": float(diff.abs().max()),
    }


def seconds_per_step(row: dict[str, Any]) -> float | None:
    """The s/step the table shows: without the first step when there were >= 3 steps."""
    m = row.get("measurement") or {}
    steady = m.get("seconds_per_step_steady")
    return steady if steady is not None else m.get("seconds_per_step")


def add_comparisons(rows: list[dict[str, Any]], reference: str) -> None:
    """Set ``ratio_to_reference`` (s/step over the reference's, same job) and ``prediction_error_pct``
    ((predicted - measured) / measured peak reserved, whole generation) on every row, in place."""
    speeds = {r["job"]: seconds_per_step(r) for r in rows if r["config"] == reference and r["status"] == "ok"}
    for row in rows:
        mine, theirs = seconds_per_step(row), speeds.get(row["job"])
        row["ratio_to_reference"] = mine / theirs if mine is not None and theirs else None
        predicted = row.get("predicted_peak_bytes")
        measured = (row.get("measurement") or {}).get("peak_reserved_bytes")
        row["prediction_error_pct"] = (
            100.0 * (predicted - measured) / measured if predicted is not None and measured else None
        )


def _gib(value: float | None) -> str:
    return "" if value is None else f"{value / GIB:.2f}"


def _num(value: float | None, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def _notes(row: dict[str, Any]) -> str:
    notes = []
    if row["status"] != "ok":
        notes.append(f"{row['status']}: {row.get('reason') or row.get('error') or ''}".strip())
    leak = row.get("gpu_allocated_after_release_bytes")
    if leak:
        notes.append(f"{leak / 2**20:+.0f} MiB allocated after release")
    if row.get("components_modified"):
        notes.append("release left the weights changed: rebuilt")
    if row.get("release_error"):
        notes.append(f"release failed: {row['release_error']}")
    if row.get("release_leftovers"):
        notes.append(f"release left {row['release_leftovers']}")
    if row.get("latents_finite") is False:
        notes.append("non-finite latents")
    predicted = row.get("predicted_device_peaks") or {}
    for device, peak in (row.get("other_gpu_peaks") or {}).items():
        guess = predicted.get(device)
        notes.append(f"{device} peak {_gib(peak)} GiB" + (f" (predicted {_gib(guess)})" if guess else ""))
    return "; ".join(notes).replace("|", "/").replace("\n", " ")[:300]


def markdown(rows: list[dict[str, Any]], env: dict[str, Any], settings: dict[str, Any]) -> str:
    """The Markdown report: header, one table row per (job, configuration), how to read it."""
    predicted = any(r.get("predicted_peak_bytes") is not None for r in rows)
    head = [
        "job",
        "configuration",
        "peak reserved GiB",
        "denoise peak GiB",
        "s/step",
        "x reference",
        "end-to-end s",
        "host RSS peak GiB",
        "pinned GiB",
        "latent rel L2",
        "latent max abs",
    ]
    if predicted:
        head += ["predicted peak GiB", "prediction error %"]
    rungs = any(r.get("speed") for r in rows)
    if rungs:
        head += ["speed", "vs exact rel L2", "predicted s/step", "s/step error %"]
    head.append("notes")
    lines = [
        f"# QwenFit benchmark ({settings.get('arch')}, {settings.get('dtype')} weights, {settings.get('steps')} steps)",
        "",
        f"{env.get('gpu') or env.get('device')}; torch {env.get('torch')} (CUDA {env.get('cuda')}), "
        f"diffusers {env.get('diffusers')}, transformers {env.get('transformers')}; {env.get('date')}",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" for _ in head) + "|",
    ]
    for row in rows:
        m = row.get("measurement") or {}
        denoise = (m.get("phases") or {}).get("denoise") or {}
        cells = [
            row.get("job_description") or row["job"],
            row["config"],
            _gib(m.get("peak_reserved_bytes")),
            _gib(denoise.get("peak_reserved_bytes")),
            _num(seconds_per_step(row), ".3f"),
            _num(row.get("ratio_to_reference"), ".2f"),
            _num(m.get("total_seconds"), ".2f"),
            _gib(m.get("host_rss_peak_bytes")),
            _gib(m.get("pinned_bytes")),
            _num(row.get("latent_rel_l2"), ".2e"),
            _num(row.get("latent_max_abs"), ".2e"),
        ]
        if predicted:
            cells += [_gib(row.get("predicted_peak_bytes")), _num(row.get("prediction_error_pct"), "+.1f")]
        if rungs:
            measured, guess = seconds_per_step(row), row.get("predicted_seconds_per_step")
            error = 100 * (guess - measured) / measured if guess and measured else None
            cells += [
                row.get("speed") or "",
                _num(row.get("vs_exact_rel_l2"), ".2e"),
                _num(guess, ".3f"),
                _num(error, "+.1f"),
            ]
        cells.append(_notes(row))
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        f"- s/step: denoising seconds per step, without the first step when steps >= 3 (all steps in "
        f"bench.json); x reference: s/step over {settings.get('reference')!r} on the same job.",
        "- Peaks are `torch.cuda.max_memory_reserved`: the largest phase peak, and the denoise phase's own.",
        "- end-to-end: from the pipeline call to its return (text encoding, VAE encode/decode included; "
        "placing the weights excluded: see prepare_seconds in bench.json).",
        "- host RSS peak: VmHWM during the run (reset before it). pinned: what the configuration reports "
        "(pinned_note in bench.json says how it was obtained); pinned_allocator_bytes is torch's measured figure.",
        "- latent deviation: final packed latents against the reference configuration, same job and seed: "
        "||a-b||/||b|| and max |a-b|.",
    ]
    if predicted:
        lines.append("- prediction error: (predicted - measured) / measured peak reserved, whole generation.")
    return "\n".join(lines) + "\n"


def write_report(
    out_dir: Path, rows: list[dict[str, Any]], env: dict[str, Any], settings: dict[str, Any]
) -> tuple[Path, Path]:
    """Write ``bench.json`` and ``bench.md`` under ``out_dir`` (atomically: a kill leaves the last good pair)."""
    add_comparisons(rows, settings["reference"])
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = out_dir / "bench.json", out_dir / "bench.md"
    texts = (
        json.dumps({"environment": env, "settings": settings, "rows": rows}, indent=1, default=str),
        markdown(rows, env, settings),
    )
    for path, text in zip(paths, texts, strict=True):
        staging = path.with_suffix(path.suffix + ".tmp")
        staging.write_text(text)
        staging.replace(path)
    return paths


def print_and_write(result: Any, out: Path | None) -> None:
    """A bench script's result as JSON: printed, and written to ``out`` (its folder made) when given."""
    text = json.dumps(result, indent=1, default=str)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    print(text)
