"""Chart geometry for the static site: data in, SVG coordinates out.

The SVG markup itself is written by a Jinja macro (`leaderboard/templates/_charts.html`), so every
label passes through autoescaping; this module only does the arithmetic: scales, ticks, paths,
where point labels go.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field

WIDTH, HEIGHT = 640, 320
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 16, 48
PALETTE = ("#1f6feb", "#d1242f", "#1a7f37", "#8250df", "#bf8700", "#0a7ea4", "#cf222e", "#57606a")
POINT_COLOUR, FRONT_COLOUR = "#57606a", "#d1242f"
ZERO_STRIP = 40
"""Pixels at the left of a log x axis kept for points at 0 (count models have no parameters)."""
CHAR_WIDTH, LABEL_HEIGHT = 6.2, 12.0
"""Approximate size of an 11 px label glyph and line, to keep labels from overlapping."""


@dataclass(frozen=True)
class Tick:
    position: float
    label: str


@dataclass(frozen=True)
class Label:
    """Text drawn beside a point: x, y of its baseline start, and which way it runs."""

    x: float
    y: float
    text: str
    anchor: str = "start"


@dataclass(frozen=True)
class Point:
    x: float
    y: float
    label: str
    """The tooltip: everything about the point."""
    href: str | None = None
    highlight: bool = False
    colour: str = POINT_COLOUR
    tag: Label | None = None
    """The short text drawn beside it, when there is room."""


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
    zero_strip: float | None = None
    """x of the boundary between the '0' strip and the log axis, when the chart has one."""


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
        values = log_values(10 ** self.low, 10 ** self.high) if self.log else nice_values(self.low, self.high, count)
        return [Tick(round(self(v), 1), short_number(v)) for v in values]


def log_values(low: float, high: float, most: int = 9) -> list[float]:
    """Tick values for a log axis over [low, high]: 1-2-5 steps, thinned to powers of ten when
    the range is wide, and evenly spaced round values when it is too narrow for two of those."""
    for multipliers in ((1, 2, 5), (1,)):
        values = [m * 10.0 ** e for e in range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)
                  for m in multipliers]
        values = [v for v in values if low * (1 - 1e-9) <= v <= high * (1 + 1e-9)]
        if len(values) <= most:
            break
    if len(values) < 2:
        values = nice_values(low, high, 4)
    return values


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


HOUR, DAY = 3600.0, 86400.0
_DATE_STEPS = (HOUR, 3 * HOUR, 6 * HOUR, 12 * HOUR, DAY, 2 * DAY, 7 * DAY, 14 * DAY, 30 * DAY, 91 * DAY, 365 * DAY)


def date_ticks(scale: Scale, most: int = 6) -> list[Tick]:
    """Ticks for an axis of POSIX seconds (UTC): dates, or dates with times when it spans hours."""
    low, high = scale.low, scale.high
    step = next((s for s in _DATE_STEPS if (high - low) / s <= most), _DATE_STEPS[-1])
    first = math.ceil(low / step) * step
    with_time = step < DAY
    ticks, value = [], first
    while value <= high:
        moment = dt.datetime.fromtimestamp(value, dt.timezone.utc)
        label = moment.strftime("%b %d %H:%M" if with_time else "%Y-%m-%d")
        half = CHAR_WIDTH * len(label) / 2
        if LEFT <= scale(value) - half and scale(value) + half <= WIDTH:  # the label fits in the picture
            ticks.append(Tick(round(scale(value), 1), label))
        value += step
    return ticks


def short_number(value: float) -> str:
    for suffix, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.3g}{suffix}"
    return f"{value:.3g}"


def _padded(values: list[float], log: bool, minimum_pad: float = 1.0) -> tuple[float, float]:
    low, high = min(values), max(values)
    if log:
        return low / 1.15, high * 1.15
    pad = (high - low) * 0.05 or minimum_pad
    return low - pad, high + pad


def place_labels(points: list[tuple[float, float, str]], width: float = WIDTH, height: float = HEIGHT) -> list[Label | None]:
    """A label beside each point where it overlaps no label placed before it (else None: the
    point keeps its tooltip). Tries right, left, above and below, in that order."""
    boxes: list[tuple[float, float, float, float]] = []
    placed: list[Label | None] = []
    for x, y, text in points:
        w = CHAR_WIDTH * len(text)
        candidates = [Label(x + 7, y + 4, text, "start"), Label(x - 7, y + 4, text, "end"),
                      Label(x - w / 2, y - 8, text, "start"), Label(x - w / 2, y + 16, text, "start")]
        chosen = None
        for label in candidates:
            left = label.x - w if label.anchor == "end" else label.x
            box = (left, label.y - LABEL_HEIGHT + 2, left + w, label.y + 2)
            inside = box[0] >= LEFT and box[2] <= width - RIGHT and box[1] >= TOP and box[3] <= height - BOTTOM
            if inside and not any(_overlap(box, other) for other in boxes):
                chosen = label
                boxes.append(box)
                break
        placed.append(chosen)
    return placed


def _overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def line_chart(title: str, x_label: str, y_label: str, lines: list[tuple[str, list[tuple[float, float]]]],
               log_y: bool = True, x_dates: bool = False,
               tags: list[list[str]] | None = None) -> Chart | None:
    """One polyline per (label, [(x, y), ...]); None when there is nothing to draw.

    With `x_dates` the x values are POSIX seconds and the axis shows dates. `tags`, one list per
    line, names each point (drawn beside it where there is room)."""
    kept = []
    for index, (label, data) in enumerate(lines):
        names = (tags[index] if tags else [""] * len(data))
        rows = [(x, y, name) for (x, y), name in zip(data, names) if y > 0 and math.isfinite(y)]
        if rows:
            kept.append((label, rows))
    if not kept:
        return None
    xs = [x for _, rows in kept for x, _, _ in rows]
    ys = [y for _, rows in kept for _, y, _ in rows]
    x_scale = Scale(*_padded(xs, False, DAY if x_dates else 1.0), LEFT, WIDTH - RIGHT, log=False)
    y_scale = Scale(*_padded(ys, log_y), HEIGHT - BOTTOM, TOP, log=log_y)
    positions = [(round(x_scale(x), 1), round(y_scale(y), 1), name) for _, rows in kept for x, y, name in rows]
    labels = iter(place_labels([p for p in positions if p[2]]))
    series, flat = [], iter(positions)
    for index, (label, rows) in enumerate(kept):
        colour = PALETTE[index % len(PALETTE)]
        points = []
        for x, y, name in rows:
            px, py, _ = next(flat)
            where = _date_text(x) if x_dates else short_number(x)
            tip = f"{label}: {y:.2f} at {where}" + (f" ({name})" if name else "")
            points.append(Point(px, py, tip, colour=colour, tag=next(labels) if name else None))
        series.append(Series(label, colour, " ".join(f"{p.x},{p.y}" for p in points), points))
    x_ticks = date_ticks(x_scale) if x_dates else x_scale.ticks()
    return Chart(title, x_label, y_label, x_ticks, y_scale.ticks(), series, [])


def _date_text(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).strftime("%Y-%m-%d %H:%M")


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
    """Points (x, y, label, href) on log-log axes, each labelled, the Pareto front joined and
    highlighted. Points at x = 0 (a count model has no parameters) stand in a strip at the left
    edge marked "0", and take part in the front as the cheapest of all."""
    items = [(max(x, 0.0), y, label, href) for x, y, label, href in items
             if math.isfinite(x) and y > 0 and math.isfinite(y)]
    if not items:
        return None
    positive = [x for x, *_ in items if x > 0]
    has_zero = len(positive) < len(items)
    axis_start = LEFT + ZERO_STRIP if has_zero else LEFT
    x_scale = Scale(*_padded(positive or [1.0], True), axis_start, WIDTH - RIGHT, log=True)
    y_scale = Scale(*_padded([i[1] for i in items], True), HEIGHT - BOTTOM, TOP, log=True)
    front = pareto_front([(i[0], i[1]) for i in items])
    zero_x = LEFT + ZERO_STRIP / 2
    xy = [(round(x_scale(x) if x > 0 else zero_x, 1), round(y_scale(y), 1)) for x, y, _, _ in items]
    # Label the front first: those are the names a reader looks for.
    order = sorted(range(len(items)), key=lambda i: (i not in front, items[i][1]))
    placed = dict(zip(order, place_labels([(*xy[i], items[i][2]) for i in order])))
    points = [Point(xy[i][0], xy[i][1], f"{label}: {y:.2f} at {short_number(x) if x > 0 else '0'}", href,
                    i in front, FRONT_COLOUR if i in front else POINT_COLOUR, placed[i])
              for i, (x, y, label, href) in enumerate(items)]
    frontier = sorted((p for p in points if p.highlight), key=lambda p: p.x)
    path = " ".join(f"{p.x},{p.y}" for p in frontier)
    x_ticks = x_scale.ticks() + ([Tick(zero_x, "0")] if has_zero else [])
    return Chart(title, x_label, y_label, x_ticks, y_scale.ticks(),
                 [Series("Pareto front", FRONT_COLOUR, path)], points,
                 zero_strip=float(axis_start) if has_zero else None)
