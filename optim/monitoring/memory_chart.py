"""A picture of memory over one run: a line per GPU, the phases as bands, measured and predicted peaks.

Without a GPU the line is this process's host memory (RSS), so the chart still tells where the run
spent memory. Drawn with Pillow only.
"""

from __future__ import annotations

import math

from PIL import Image, ImageDraw, ImageFont

from .memory_sampler import END_OF_RUN, MemorySample, PhaseMark
from .run_record import RunRecord

GIB = 1024**3
BACKGROUND = (24, 26, 32)
GRID = (58, 62, 72)
TEXT = (220, 222, 228)
MUTED = (150, 154, 165)
LINES = ((94, 200, 255), (255, 170, 70), (130, 220, 120), (230, 110, 200))
PHASE_FILLS = {"encode": (44, 48, 74), "denoise": (40, 62, 58), "decode": (70, 52, 44)}
PREDICTED = (255, 214, 90)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one fixed-size font
        return ImageFont.load_default()


def _series(samples: list[MemorySample]) -> tuple[str, list[tuple[str, list[tuple[float, int]]]], int]:
    """(what is drawn, [(label, [(t, bytes)])], the top of the scale in bytes)."""
    gpus = samples[0].gpus if samples else ()
    if gpus:
        lines = []
        for g in gpus:
            points = [(s.t, s.gpus[g.index].used_bytes) for s in samples if len(s.gpus) > g.index]
            lines.append((f"GPU {g.index} {g.name}", points))
        what = "VRAM used (whole device, sampled); peaks per phase: torch's reserved memory (exact)"
        return what, lines, max(g.total_bytes for g in gpus)
    points = [(s.t, s.rss_bytes) for s in samples]
    top = max((b for _, b in points), default=GIB)
    return "no GPU: host RAM of this process (RSS)", [("RSS", points)], top


def _nice_top(top: int) -> float:
    """The scale's top in GiB: the next step of 1, 2, 5 x 10^k above ``top``."""
    gib = max(top / GIB, 1e-3) * 1.05
    step = 10 ** math.floor(math.log10(gib))
    for factor in (1, 2, 5, 10):
        if gib <= factor * step:
            return factor * step
    return 10 * step


def draw_run_chart(
    samples: list[MemorySample],
    marks: list[PhaseMark],
    record: RunRecord | None,
    size: tuple[int, int] = (768, 384),
    title: str | None = None,
    window: tuple[float, float] | None = None,
) -> Image.Image:
    """Draw ``samples`` with the phase ``marks`` and ``record``'s measured and predicted peaks per phase
    (peaks only for GPUs), over ``window`` (start, end on the samples' clock; default: the samples' span)."""
    width, height = size
    image = Image.new("RGB", size, BACKGROUND)
    draw = ImageDraw.Draw(image)
    font, small = _font(15), _font(12)
    left, right, top, bottom = 64, width - 16, 56, height - 44
    heading = title or (
        f"Memory over the last run: {record.model}, {record.seconds_per_step:.3f} s/step" if record else "Memory"
    )
    draw.text((left, 10), heading, fill=TEXT, font=font)
    if len(samples) < 2:
        draw.text((left, height // 2), "not enough samples yet: run a QwenFit workflow", fill=MUTED, font=font)
        return image
    what, lines, scale_top = _series(samples)
    draw.text((left, 32), what, fill=MUTED, font=small)
    t0, t1 = window or (samples[0].t, samples[-1].t)
    span = max(t1 - t0, 1e-6)
    y_top = _nice_top(scale_top)

    def x(t: float) -> float:
        return left + (t - t0) / span * (right - left)

    def y(nbytes: float) -> float:
        return bottom - (nbytes / GIB) / y_top * (bottom - top)

    # Phase bands, labelled with the measured (and predicted) peak of each phase.
    phase_marks = [m for m in marks if t0 - 1e-6 <= m.t <= t1 + 1e-6]
    on_gpu = record is not None and bool(samples[0].gpus)
    measured = {p.name: p for p in record.phases} if on_gpu else {}
    predicted = dict(record.predicted_phase_peaks) if on_gpu else {}
    for i, mark in enumerate(phase_marks):
        if mark.label == END_OF_RUN:
            continue
        end = phase_marks[i + 1].t if i + 1 < len(phase_marks) else t1
        draw.rectangle([x(mark.t), top, x(end), bottom], fill=PHASE_FILLS.get(mark.label, GRID))
        draw.text((x(mark.t) + 4, top + 4), mark.label, fill=TEXT, font=small)
        stat = measured.get(mark.label)
        if stat is not None and stat.peak_reserved:
            draw.text((x(mark.t) + 4, top + 20), f"peak {stat.peak_reserved / GIB:.2f} GiB", fill=TEXT, font=small)
        if mark.label in predicted:
            draw.text(
                (x(mark.t) + 4, top + 36), f"plan {predicted[mark.label] / GIB:.2f} GiB", fill=PREDICTED, font=small
            )
            if stat is not None and stat.peak_reserved:
                level = y(predicted[mark.label])
                draw.line([x(mark.t), level, x(end), level], fill=PREDICTED, width=1)
    # Grid and scale.
    for k in range(5):
        value = y_top * k / 4
        level = y(value * GIB)
        draw.line([left, level, right, level], fill=GRID, width=1)
        draw.text((6, level - 7), f"{value:.3g} GiB", fill=MUTED, font=small)
    draw.text((left, bottom + 6), "0 s", fill=MUTED, font=small)
    draw.text((right - 60, bottom + 6), f"{span:.1f} s", fill=MUTED, font=small)
    if samples[0].gpus:  # the card's size: how close the run came to it
        level = y(scale_top)
        for start in range(left, right, 12):
            draw.line([start, level, min(start + 6, right), level], fill=MUTED, width=1)
        draw.text((right - 190, bottom + 22), f"- - device total {scale_top / GIB:.1f} GiB", fill=MUTED, font=small)
    # The lines, and a legend.
    for n, (label, points) in enumerate(lines):
        colour = LINES[n % len(LINES)]
        points = [(t, b) for t, b in points if t0 - 1e-6 <= t <= t1 + 1e-6]
        if len(points) >= 2:
            draw.line([(x(t), y(b)) for t, b in points], fill=colour, width=2)
        peak = max(b for _, b in points) if points else 0
        draw.text((left + 200 * n, bottom + 22), f"{label}: max {peak / GIB:.2f} GiB", fill=colour, font=small)
    return image
