"""Chart geometry for the static site: data in, SVG coordinates out.

The SVG markup itself is written by a Jinja macro (`leaderboard/templates/_charts.html`), so every
label passes through autoescaping; this module only does the arithmetic: scales, ticks, paths.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

WIDTH, HEIGHT = 640, 320
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 16, 48
PALETTE = ("#1f6feb", "#d1242f", "#1a7f37", "#8250df", "#bf8700", "#0a7ea4", "#cf222e", "#57606a")


@dataclass(frozen=True)
class Tick:
    position: float
    label: str


@dataclass(frozen=True)
class Point:
    x: float
    y: float
    label: str
    href: str | None = None
    highlight: bool = False


@dataclass(frozen=True)
class Series:
    label: str
    colour: str
    path: str
    points: list[Point] = field(default_factory=list)


@dataclass(frozen=True)
class Chart:
    title: str
    x_label: str
    y_label: str
    x_ticks: list[Tick]
    y_ticks: list[Tick]
    series: list[Series]
    points: list[Point]
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    top: int = TOP
    plot_width: int = WIDTH - LEFT - RIGHT
    plot_height: int = HEIGHT - TOP - BOTTOM


class Scale:
    """Maps data values to pixels, linearly or in log10."""

    def __init__(self, low: float, high: float, start: float, end: float, log: bool) -> None:
        self.log = log
        self.low, self.high = (math.log10(low), math.log10(high)) if log else (low, high)
        if self.high <= self.low:
            self.low, self.high = self.low - 1, self.high + 1
        self.start, self.end = start, end

    def __call__(self, value: float) -> float:
        v = math.log10(value) if self.log else value
        return self.start + (v - self.low) / (self.high - self.low) * (self.end - self.start)

    def ticks(self, count: int = 5) -> list[Tick]:
        if self.log:
            values = [10.0 ** e for e in range(math.floor(self.low), math.ceil(self.high) + 1)]
            values = [v for v in values if self.low - 1e-9 <= math.log10(v) <= self.high + 1e-9]
            if len(values) < 2:  # a narrow log range: fall back to evenly spaced values
                values = nice_values(10 ** self.low, 10 ** self.high, count)
        else:
            values = nice_values(self.low, self.high, count)
        return [Tick(round(self(v), 1), short_number(v)) for v in values]


def nice_values(low: float, high: float, count: int) -> list[float]:
    """Round tick values (1, 2, 5 x 10^k steps) covering [low, high]."""
    span = high - low
    raw = span / max(count, 1)
    magnitude = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step) * step
    values, v = [], first
    while v <= high + step * 1e-9:
        values.append(round(v, 10))
        v += step
    return values


def short_number(value: float) -> str:
    for suffix, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.3g}{suffix}"
    return f"{value:.3g}"


def _padded(values: list[float], log: bool) -> tuple[float, float]:
    low, high = min(values), max(values)
    if log:
        return low / 1.15, high * 1.15
    pad = (high - low) * 0.05 or abs(high) * 0.05 or 1.0
    return low - pad, high + pad


def line_chart(title: str, x_label: str, y_label: str, lines: list[tuple[str, list[tuple[float, float]]]],
               log_y: bool = True) -> Chart | None:
    """One polyline per (label, [(x, y), ...]); None when there is nothing to draw."""
    lines = [(label, [(x, y) for x, y in data if y > 0 and math.isfinite(y)]) for label, data in lines]
    lines = [(label, data) for label, data in lines if data]
    if not lines:
        return None
    xs = [x for _, data in lines for x, _ in data]
    ys = [y for _, data in lines for _, y in data]
    x_scale = Scale(*_padded(xs, False), LEFT, WIDTH - RIGHT, log=False)
    y_scale = Scale(*_padded(ys, log_y), HEIGHT - BOTTOM, TOP, log=log_y)
    series = []
    for index, (label, data) in enumerate(lines):
        points = [Point(round(x_scale(x), 1), round(y_scale(y), 1), f"{label}: {y:.2f} at {short_number(x)}")
                  for x, y in data]
        path = " ".join(f"{p.x},{p.y}" for p in points)
        series.append(Series(label, PALETTE[index % len(PALETTE)], path, points))
    return Chart(title, x_label, y_label, x_scale.ticks(), y_scale.ticks(), series, [])


def pareto_front(items: list[tuple[float, float]]) -> set[int]:
    """Indices of the points no other point beats on both x (cost) and y (perplexity), lower better."""
    order = sorted(range(len(items)), key=lambda i: (items[i][0], items[i][1]))
    front, best = set(), math.inf
    for index in order:
        if items[index][1] < best:
            front.add(index)
            best = items[index][1]
    return front


def scatter_chart(title: str, x_label: str, y_label: str,
                  items: list[tuple[float, float, str, str | None]]) -> Chart | None:
    """Points (x, y, label, href) on log-log axes, the Pareto front joined and highlighted."""
    items = [item for item in items if item[0] > 0 and item[1] > 0 and math.isfinite(item[1])]
    if not items:
        return None
    x_scale = Scale(*_padded([i[0] for i in items], True), LEFT, WIDTH - RIGHT, log=True)
    y_scale = Scale(*_padded([i[1] for i in items], True), HEIGHT - BOTTOM, TOP, log=True)
    front = pareto_front([(i[0], i[1]) for i in items])
    points = [Point(round(x_scale(x), 1), round(y_scale(y), 1),
                    f"{label}: {y:.2f} at {short_number(x)}", href, index in front)
              for index, (x, y, label, href) in enumerate(items)]
    frontier = sorted((p for p in points if p.highlight), key=lambda p: p.x)
    path = " ".join(f"{p.x},{p.y}" for p in frontier)
    return Chart(title, x_label, y_label, x_scale.ticks(), y_scale.ticks(),
                 [Series("Pareto front", PALETTE[1], path)], points)
