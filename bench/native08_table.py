"""The tables of ``bench/gpu_native08.sh``'s rows: ComfyUI 0.8.0's own nodes against QwenFit's default settings
per card, and each 8-bit path's deviation from its own harness's bf16 computation of the same file and seed.

    python bench/native08_table.py RESULTS_DIR     (the folder of <kind>_<card>.json files; Markdown on stdout)

Deviation = relative L2 of the decoded first image (``||a - b|| / ||b||``) within one harness: ComfyUI's default
(fp8 products through comfy-kitchen) against ComfyUI with fp8 compute off, QwenFit's rungs against QwenFit exact.
The two harnesses sample differently (their own noise), so their images are never compared with each other.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

CARDS = {"8": "8 GB", "24": "24 GB", "none": "whole GPU"}
FILE = "Edit-2509 scaled fp8"
HEADER = (
    "| card | file | ComfyUI 0.8.0 s/step | QwenFit default s/step | ratio | ComfyUI load+1st s | QwenFit load+1st s "
    "| ratio |"
)


def _rows(folder: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}


def _num(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _ratio(ours: float | None, theirs: float | None) -> str:
    return "-" if not ours or not theirs else f"{ours / theirs:.2f}"


def _image(folder: Path, stem: str):
    from safetensors.torch import load_file

    path = folder / f"{stem}.safetensors"
    return load_file(str(path))["image"].double() if path.is_file() else None


def _deviation(folder: Path, stem: str, reference: str) -> str:
    a, b = _image(folder, stem), _image(folder, reference)
    if a is None or b is None or a.shape != b.shape:
        return "-"
    return f"{float((a - b).norm() / b.norm()):.2e}"


def tables(folder: Path) -> str:
    rows = _rows(folder)
    some = next(iter(rows.values()), {})
    lines = [f"GPU: {some.get('gpu', '?')}; {some.get('date', '')}; rows: {', '.join(rows)}", "", HEADER]
    lines.append("|" + "---|" * 8)
    for card, card_name in CARDS.items():
        native, ours = rows.get(f"native_{card}", {}), rows.get(f"qf-auto_{card}", {})
        if not native and not ours:
            continue
        n_step, q_step = native.get("seconds_per_step_steady"), ours.get("seconds_per_step_steady")
        n_first, q_first = native.get("first_image_seconds"), ours.get("first_image_seconds")
        lines.append(
            f"| {card_name} | {FILE} | {_num(n_step)} | {_num(q_step)} | {_ratio(q_step, n_step)} | {_num(n_first, 1)} "
            f"| {_num(q_first, 1)} | {_ratio(q_first, n_first)} |"
        )
    lines += ["", "Deviation of the first image (same seed, same harness), whole GPU:", ""]
    lines += ["| path | against | relative L2 |", "|---|---|---|"]
    for stem, reference, what, against in (
        ("native_none", "native-bf16_none", "ComfyUI 0.8.0 default (fp8 products)", "ComfyUI, fp8 compute off"),
        ("qf-auto_none", "qf-exact_none", "QwenFit default (auto)", "QwenFit exact"),
        ("qf-fast_none", "qf-exact_none", "QwenFit fast (compiled)", "QwenFit exact"),
        ("qf-auto_none", "qf-fast_none", "QwenFit default (auto, uncompiled)", "QwenFit fast (compiled)"),
    ):
        if stem in rows and reference in rows:
            lines.append(f"| {what} | {against} | {_deviation(folder, stem, reference)} |")
    lines += ["", "Every row:", ""]
    lines += ["| row | runner | s/step | load+1st s | second image s | peak reserved GiB | error |"]
    lines.append("|---|---|---|---|---|---|---|")
    for stem, r in rows.items():
        runs = r.get("runs") or []
        second = runs[1]["seconds"] if len(runs) > 1 else None
        peak = r.get("peak_reserved_bytes")
        lines.append(
            f"| {stem} | {r.get('runner', '')} | {_num(r.get('seconds_per_step_steady'))} "
            f"| {_num(r.get('first_image_seconds'), 1)} | {_num(second, 1)} "
            f"| {_num(peak / 2**30 if peak else None, 2)} | {str(r.get('error') or '')[:160]} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(tables(Path(sys.argv[1])))
