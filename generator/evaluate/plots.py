"""Line plots as PNG with Pillow alone (no matplotlib): one figure of side-by-side panels, each with axes, ticks,
one line per series with markers, a legend, and an optional dashed line for a published value."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

PANEL_W, PANEL_H = 480, 340
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 62, 16, 30, 44
COLOURS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (23, 190, 207))
GREY, BLACK, LIGHT = (120, 120, 120), (0, 0, 0), (225, 225, 225)


@dataclass
class Panel:
    title: str
    x_label: str
    y_label: str
    series: dict[str, list[tuple[float, float]]]  # name → (x, y) points; y may be None (not measured)
    reference: tuple[str, float] | None = None  # (label, value): a dashed horizontal line
    notes: list[str] = field(default_factory=list)


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering [low, high] (1, 2 or 5 times a power of ten apart)."""
    if not high > low:
        low, high = low - 0.5 * max(abs(low), 1.0), high + 0.5 * max(abs(high), 1.0)
    raw = (high - low) / max(count - 1, 1)
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    start = math.floor(low / step) * step
    ticks = [start + i * step for i in range(int(math.ceil((high - start) / step)) + 1)]
    return [round(t, 10) for t in ticks]


def _label(value: float) -> str:
    return f"{value:.4g}"


def _draw_panel(draw, origin: tuple[int, int], panel: Panel, font) -> None:
    ox, oy = origin
    left, top = ox + MARGIN_L, oy + MARGIN_T
    right, bottom = ox + PANEL_W - MARGIN_R, oy + PANEL_H - MARGIN_B
    points = [(x, y) for pts in panel.series.values() for x, y in pts if y is not None and math.isfinite(y)]
    xs = [x for x, _ in points] or [0.0, 1.0]
    ys = [y for _, y in points] + ([panel.reference[1]] if panel.reference else []) or [0.0, 1.0]
    x_ticks, y_ticks = nice_ticks(min(xs), max(xs)), nice_ticks(min(ys), max(ys))
    x0, x1, y0, y1 = x_ticks[0], x_ticks[-1], y_ticks[0], y_ticks[-1]

    def to_px(x: float, y: float) -> tuple[float, float]:
        return left + (x - x0) / (x1 - x0) * (right - left), bottom - (y - y0) / (y1 - y0) * (bottom - top)

    draw.text((ox + PANEL_W / 2, oy + 8), panel.title, fill=BLACK, font=font, anchor="mt")
    for t in x_ticks:
        px = to_px(t, y0)[0]
        draw.line([(px, top), (px, bottom)], fill=LIGHT)
        draw.text((px, bottom + 4), _label(t), fill=BLACK, font=font, anchor="mt")
    for t in y_ticks:
        py = to_px(x0, t)[1]
        draw.line([(left, py), (right, py)], fill=LIGHT)
        draw.text((left - 4, py), _label(t), fill=BLACK, font=font, anchor="rm")
    draw.rectangle([left, top, right, bottom], outline=BLACK)
    draw.text(((left + right) / 2, oy + PANEL_H - 14), panel.x_label, fill=BLACK, font=font, anchor="mm")
    draw.text((ox + 4, top - 14), panel.y_label, fill=BLACK, font=font, anchor="lm")
    legend = []
    if panel.reference:
        label, value = panel.reference
        py = to_px(x0, value)[1]
        for sx in range(int(left), int(right), 10):
            draw.line([(sx, py), (min(sx + 5, right), py)], fill=GREY, width=2)
        legend.append((label, GREY))
    for k, (name, pts) in enumerate(panel.series.items()):
        colour = COLOURS[k % len(COLOURS)]
        line = [to_px(x, y) for x, y in sorted(pts) if y is not None and math.isfinite(y)]
        if len(line) > 1:
            draw.line(line, fill=colour, width=2)
        for px, py in line:
            draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=colour)
        legend.append((name, colour))
    for k, (name, colour) in enumerate(legend):
        ly = top + 6 + 14 * k
        draw.line([(right - 120, ly), (right - 104, ly)], fill=colour, width=2)
        draw.text((right - 100, ly), name[:18], fill=colour, font=font, anchor="lm")


def figure(path: Path, panels: list[Panel]) -> Path:
    """Write the panels side by side into the PNG ``path``."""
    from PIL import Image, ImageDraw, ImageFont

    if not panels:
        raise ValueError("a figure needs at least one panel")
    image = Image.new("RGB", (PANEL_W * len(panels), PANEL_H), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    for k, panel in enumerate(panels):
        _draw_panel(draw, (k * PANEL_W, 0), panel, font)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path
