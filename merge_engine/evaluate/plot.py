"""The evaluation plot: each set's perplexity (log scale) against the first swept value,
one line per set (per value of a second swept path, when there is one), the published
variant ringed. Drawn with Pillow, which the engine already has: a plain line chart does
not justify matplotlib's ~40 MB and its font cache on every merge worker."""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from merge_engine.evaluate.table import EvalRow, EvalTable

EVALUATION_PLOT = "evaluation.png"
WIDTH, HEIGHT = 900, 540
LEFT, RIGHT, TOP, BOTTOM = 80, 220, 50, 70
COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
           "#17becf"]


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _variants(table: EvalTable) -> list[EvalRow]:
    """The variants with scores (a failed one has none) and a number on the first path."""
    swept = table.swept()
    return [r for r in table.rows if r.kind == "variant" and swept and r.scores
            and _number(r.values.get(swept[0]))]


def plottable(table: EvalTable) -> bool:
    """At least two scored variants with a numeric value on the first swept path."""
    return len({r.values[table.swept()[0]] for r in _variants(table)}) >= 2


def _lines(table: EvalTable) -> list[tuple[str, list[tuple[float, float, bool]]]]:
    """(legend, [(x, perplexity, chosen)] sorted by x) per set and second value."""
    swept = table.swept()
    out: dict[str, list] = {}
    for row in _variants(table):
        other = "".join(f", {k}={row.values[k]}" for k in swept[1:] if k in row.values)
        for s in table.sets:
            if s.name in row.scores:
                out.setdefault(s.name + other, []).append(
                    (float(row.values[swept[0]]), row.scores[s.name].perplexity,
                     row.label == table.chosen))
    return [(k, sorted(v)) for k, v in out.items()]


def _ticks(low: float, high: float) -> list[float]:
    """Perplexity ticks between ``low`` and ``high``: 1-2-5 steps, else 5 log-even ones."""
    ticks = [m * 10 ** e for e in range(math.floor(math.log10(low)),
                                        math.ceil(math.log10(high)) + 1) for m in (1, 2, 5)]
    ticks = [t for t in ticks if low <= t <= high]
    if len(ticks) >= 3:
        return ticks
    return [math.exp(math.log(low) + i * (math.log(high) - math.log(low)) / 4) for i in range(5)]


def write_evaluation_plot(table: EvalTable, path: Path) -> bool:
    """Write the PNG to ``path`` when the table is :func:`plottable`; returns whether it
    did."""
    if not plottable(table):
        return False
    lines = _lines(table)
    xs = [x for _, pts in lines for x, _, _ in pts]
    ys = [y for _, pts in lines for _, y, _ in pts]
    pad = (max(xs) - min(xs)) * 0.04
    x0, x1 = min(xs) - pad, max(xs) + pad
    y0, y1 = min(ys) / 1.05, max(ys) * 1.05
    if y1 / y0 < 1.2:
        mid = math.sqrt(y0 * y1)
        y0, y1 = mid / 1.1, mid * 1.1
    w, h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def at(x: float, y: float) -> tuple[float, float]:
        return (LEFT + (x - x0) / (x1 - x0) * w,
                TOP + h - (math.log(y) - math.log(y0)) / (math.log(y1) - math.log(y0)) * h)

    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=14)
    for x in sorted(set(xs)):
        px = at(x, y0)[0]
        draw.line((px, TOP + h, px, TOP + h + 5), fill="black")
        draw.text((px, TOP + h + 8), f"{x:g}", fill="black", font=font, anchor="mt")
    for y in _ticks(y0, y1):
        py = at(x0, y)[1]
        draw.line((LEFT, py, LEFT + w, py), fill="#dddddd")
        draw.text((LEFT - 6, py), f"{y:.3g}", fill="black", font=font, anchor="rm")
    draw.rectangle((LEFT, TOP, LEFT + w, TOP + h), outline="black")
    draw.text((LEFT + w / 2, HEIGHT - 20), table.swept()[0], fill="black", font=font,
              anchor="mm")
    draw.text((LEFT, TOP - 28), "perplexity (log scale; lower is better)", fill="black",
              font=font)
    for i, (legend, points) in enumerate(lines):
        colour = COLOURS[i % len(COLOURS)]
        xy = [at(x, y) for x, y, _ in points]
        if len(xy) > 1:
            draw.line(xy, fill=colour, width=3)
        for (px, py), (_, _, chosen) in zip(xy, points, strict=True):
            draw.ellipse((px - 4, py - 4, px + 4, py + 4), fill=colour)
            if chosen:
                draw.ellipse((px - 9, py - 9, px + 9, py + 9), outline="black", width=2)
        ly = TOP + 10 + 22 * i
        draw.line((LEFT + w + 15, ly, LEFT + w + 40, ly), fill=colour, width=3)
        draw.text((LEFT + w + 46, ly), legend[:24], fill="black", font=font, anchor="lm")
    if table.chosen is not None:
        ly = TOP + 10 + 22 * len(lines)
        draw.ellipse((LEFT + w + 19, ly - 9, LEFT + w + 37, ly + 9), outline="black", width=2)
        draw.text((LEFT + w + 46, ly), "published", fill="black", font=font, anchor="lm")
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial")
    image.save(partial, format="PNG")
    partial.replace(path)
    return True
