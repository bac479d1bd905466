"""A small line chart as a PNG (no plotting dependency): curves over a shared x axis, flat
reference lines, tick labels in a 3 x 5 pixel font, and a colour legend.

Used for the probe-accuracy curve of a pretraining run (``eofm-probe --run``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eofm.data_shards.png import write_png

# 3 x 5 glyphs, rows top to bottom, '#' = ink
_GLYPHS = {
    "0": ["###", "#.#", "#.#", "#.#", "###"], "1": [".#.", "##.", ".#.", ".#.", "###"],
    "2": ["###", "..#", "###", "#..", "###"], "3": ["###", "..#", ".##", "..#", "###"],
    "4": ["#.#", "#.#", "###", "..#", "..#"], "5": ["###", "#..", "###", "..#", "###"],
    "6": ["###", "#..", "###", "#.#", "###"], "7": ["###", "..#", ".#.", ".#.", ".#."],
    "8": ["###", "#.#", "###", "#.#", "###"], "9": ["###", "#.#", "###", "..#", "###"],
    "a": ["...", ".##", "#.#", "#.#", ".##"], "b": ["#..", "##.", "#.#", "#.#", "##."],
    "c": ["...", ".##", "#..", "#..", ".##"], "d": ["..#", ".##", "#.#", "#.#", ".##"],
    "e": ["...", ".#.", "###", "#..", ".##"], "f": ["..#", ".#.", "###", ".#.", ".#."],
    "g": [".##", "#.#", ".##", "..#", "##."], "h": ["#..", "##.", "#.#", "#.#", "#.#"],
    "i": [".#.", "...", ".#.", ".#.", ".#."], "j": ["..#", "...", "..#", "#.#", ".#."],
    "k": ["#..", "#.#", "##.", "##.", "#.#"], "l": ["##.", ".#.", ".#.", ".#.", "###"],
    "m": ["...", "###", "###", "#.#", "#.#"], "n": ["...", "##.", "#.#", "#.#", "#.#"],
    "o": ["...", ".#.", "#.#", "#.#", ".#."], "p": ["...", "##.", "#.#", "##.", "#.."],
    "q": ["...", ".##", "#.#", ".##", "..#"], "r": ["...", ".##", "#..", "#..", "#.."],
    "s": ["...", ".##", "##.", "..#", "##."], "t": [".#.", "###", ".#.", ".#.", "..#"],
    "u": ["...", "#.#", "#.#", "#.#", ".##"], "v": ["...", "#.#", "#.#", ".#.", ".#."],
    "w": ["...", "#.#", "###", "###", ".#."], "x": ["...", "#.#", ".#.", ".#.", "#.#"],
    "y": ["...", "#.#", ".##", "..#", "##."], "z": ["...", "###", ".#.", "#..", "###"],
    ".": ["...", "...", "...", "...", ".#."], "-": ["...", "...", "###", "...", "..."],
    "_": ["...", "...", "...", "...", "###"], "/": ["..#", "..#", ".#.", "#..", "#.."],
    ":": ["...", ".#.", "...", ".#.", "..."], "(": [".#.", "#..", "#..", "#..", ".#."],
    ")": [".#.", "..#", "..#", "..#", ".#."], "%": ["#.#", "..#", ".#.", "#..", "#.#"],
    "@": [".#.", "#.#", "###", "#..", ".##"], " ": ["...", "...", "...", "...", "..."],
    "=": ["...", "###", "...", "###", "..."], "+": ["...", ".#.", "###", ".#.", "..."],
    ",": ["...", "...", "...", ".#.", "#.."], "'": [".#.", ".#.", "...", "...", "..."],
    "<": ["..#", ".#.", "#..", ".#.", "..#"], ">": ["#..", ".#.", "..#", ".#.", "#.."],
    "&": [".#.", "#.#", ".#.", "#.#", ".##"],
}
Colour = tuple[int, int, int]  # RGB, 0..255
WHITE, INK, GRID = (255, 255, 255), (40, 40, 40), (225, 225, 225)
COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (127, 127, 127), (188, 189, 34)]


@dataclass
class Series:
    """One curve (``x`` ascending) or, with a single ``y`` and no ``x``, a flat reference."""

    name: str
    y: Sequence[float]
    x: Sequence[float] | None = None
    dashed: bool = False


def draw_text(img: np.ndarray, x: int, y: int, text: str, colour: Colour = INK,
              scale: int = 1) -> None:
    """Draw ``text`` (digits, lower-case letters, ``. - _ / : ( ) % @ = + , ' < > &`` and
    space; upper case is drawn lower) with its top-left corner at (x, y); other characters
    are left blank. Each character advances ``4 * scale`` pixels, a line is ``5 * scale``
    high (:func:`text_width`)."""
    for i, ch in enumerate(text.lower()):
        glyph = _GLYPHS.get(ch)
        if glyph is None:
            continue
        for r, row in enumerate(glyph):
            for c, v in enumerate(row):
                if v == "#":
                    y0, x0 = y + r * scale, x + (i * 4 + c) * scale
                    img[max(y0, 0):max(y0 + scale, 0), max(x0, 0):max(x0 + scale, 0)] = colour


def text_width(text: str, scale: int = 1) -> int:
    """Pixels ``text`` spans when drawn by :func:`draw_text` (0 for an empty string)."""
    return max(0, 4 * len(text) - 1) * scale


def text_up(text: str, colour: Colour = INK, scale: int = 1,
            background: Colour = WHITE) -> np.ndarray:
    """``text`` rendered on ``background`` and turned a quarter to the left (read bottom to
    top): an (text_width, 5 * scale, 3) image, the first character at the bottom."""
    img = np.empty((5 * scale, max(text_width(text, scale), 1), 3), np.uint8)
    img[:] = background
    draw_text(img, 0, 0, text, colour, scale)
    return np.ascontiguousarray(np.rot90(img))


def _line(img: np.ndarray, x0: float, y0: float, x1: float, y1: float, colour,
          width: int = 2, dashed: bool = False) -> None:
    n = int(max(abs(x1 - x0), abs(y1 - y0))) + 1
    for t in range(n + 1):
        if dashed and (t // 4) % 2:
            continue
        x = round(x0 + (x1 - x0) * t / n)
        y = round(y0 + (y1 - y0) * t / n)
        img[max(y - width // 2, 0):y + (width + 1) // 2, max(x - width // 2, 0):x + (width + 1) // 2] = colour


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values covering [lo, hi]."""
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(n - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=10 * mag)
    start = math.floor(lo / step) * step
    return [start + i * step for i in range(math.ceil((hi - start) / step) + 1)]


def _label(v: float, step: float) -> str:
    if abs(v) >= 10_000:
        return f"{v / 1000:g}k"
    digits = max(0, -math.floor(math.log10(step))) if step < 1 else 0
    return f"{v:.{digits}f}"


def line_chart(path: str | Path, series: Sequence[Series], *, x_label: str = "",
               y_label: str = "", width: int = 640, height: int = 360) -> dict:
    """Write the chart (a legend of the series' names under it, ``x_label`` under the x axis,
    ``y_label`` above the y axis); returns what it drew (axis ranges, colour per series)."""
    curves = [s for s in series if s.x is not None and len(s.y)]
    xs = [float(v) for s in curves for v in s.x]  # type: ignore[union-attr]
    ys = [float(v) for s in series for v in s.y if v is not None and math.isfinite(float(v))]
    if not xs or not ys:
        raise ValueError("series: expected at least one curve with points")
    yt = nice_ticks(min(ys), max(ys))
    xt = nice_ticks(min(xs), max(xs), 6)
    left, right, top, bottom = 44, 12, 20, 36 + 9 * ((len(series) + 2) // 3)
    img = np.empty((height, width, 3), np.uint8)
    img[:] = WHITE
    pw, ph = width - left - right, height - top - bottom

    def px(x: float) -> float:
        return left + (x - xt[0]) / (xt[-1] - xt[0]) * pw

    def py(y: float) -> float:
        return top + ph - (y - yt[0]) / (yt[-1] - yt[0]) * ph

    for v in yt:
        _line(img, left, py(v), left + pw, py(v), GRID, 1)
        draw_text(img, 2, round(py(v)) - 2, _label(v, yt[1] - yt[0]))
    for v in xt:
        _line(img, px(v), top, px(v), top + ph, GRID, 1)
        s = _label(v, xt[1] - xt[0])
        draw_text(img, min(round(px(v)) - 2 * len(s), width - 4 * len(s)), top + ph + 4, s)
    draw_text(img, 2, 4, y_label)
    draw_text(img, left + pw - 4 * len(x_label), top + ph + 14, x_label)
    _line(img, left, top + ph, left + pw, top + ph, INK, 1)
    _line(img, left, top, left, top + ph, INK, 1)
    drawn = {}
    for i, s in enumerate(series):
        colour = COLOURS[i % len(COLOURS)]
        if s.x is None:
            y = py(float(s.y[0]))
            _line(img, left, y, left + pw, y, colour, 2, dashed=True)
        else:
            pts = [(px(float(a)), py(float(b))) for a, b in zip(s.x, s.y, strict=True)]
            for (a0, b0), (a1, b1) in itertools.pairwise(pts):
                _line(img, a0, b0, a1, b1, colour, 2, s.dashed)
            for a, b in pts:
                img[max(round(b) - 2, 0):round(b) + 3, max(round(a) - 2, 0):round(a) + 3] = colour
        # legend swatch under the plot, three per row
        lx, ly = left + (i % 3) * (pw // 3), top + ph + 24 + 9 * (i // 3)
        img[ly:ly + 5, lx:lx + 14] = colour
        draw_text(img, lx + 18, ly, s.name)
        drawn[s.name] = {"colour": "#{:02x}{:02x}{:02x}".format(*colour), "legend_row": i // 3,
                         "legend_col": i % 3, "kind": "reference" if s.x is None else "curve"}
    write_png(path, img)
    return {"x_range": [xt[0], xt[-1]], "y_range": [yt[0], yt[-1]], "series": drawn}
