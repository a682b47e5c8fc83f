"""Trade-off plots of `ProfileRecord`s as a PNG.

With accuracy (any record has top-1): two panels, top-1 vs batch-1 latency and top-1 vs GFLOPs. The Pareto front
(no other model is both cheaper and at least as accurate) is drawn as a line through its points; records without
accuracy are left out of these panels and listed in the figure title.

Without accuracy there is no front to draw (both axes would be costs), so the figure shows one panel of latency vs
GFLOPs: how well FLOPs predict speed on this machine (convolutional models and ViTs often sit on different lines).

Matplotlib is driven through its object API with the Agg canvas, so the global pyplot backend is left untouched
and nothing needs a display.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from vitkd.bench.profile import ProfileRecord
from vitkd.files import atomic_write

__all__ = ["pareto_front", "plot_tradeoffs"]


def pareto_front(costs: Sequence[float], scores: Sequence[float]) -> list[int]:
    """Indices of the points no other point dominates (lower-or-equal cost with a higher score), cheapest first.

    Among points with equal cost only the best scoring one can be on the front.
    """
    if len(costs) != len(scores):
        raise ValueError(f"got {len(costs)} costs but {len(scores)} scores")
    order = sorted(range(len(costs)), key=lambda index: (costs[index], -scores[index]))
    front: list[int] = []
    best_score = float("-inf")
    for index in order:
        if scores[index] > best_score:
            front.append(index)
            best_score = scores[index]
    return front


def _short_label(name: str, limit: int = 32) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"


def _scatter_with_labels(axes: Axes, xs: list[float], ys: list[float], labels: list[str]) -> None:
    axes.scatter(xs, ys, s=28, zorder=3)
    rightmost_half = set(sorted(range(len(xs)), key=lambda index: xs[index])[(len(xs) + 1) // 2:])
    for index, (x, y, label) in enumerate(zip(xs, ys, labels)):
        # Points on the right get their label on their left, so names stay inside the axes.
        on_left = index in rightmost_half
        annotation = axes.annotate(_short_label(label), (x, y), textcoords="offset points", fontsize=7,
                                   xytext=(-4, 4) if on_left else (4, 4), ha="right" if on_left else "left")
        annotation.set_in_layout(False)  # long names may run past the axes instead of squeezing the panels
    if xs and max(xs) > 20 * min(xs) > 0:
        axes.set_xscale("log")
        axes.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))  # 0.1 0.2 0.5 1 2 5 ..., not just decades
        axes.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        axes.xaxis.set_minor_formatter(NullFormatter())
    axes.margins(x=0.08, y=0.12)
    axes.grid(True, alpha=0.3)


def _accuracy_panel(axes: Axes, records: list[ProfileRecord], cost: Callable[[ProfileRecord], float],
                    cost_label: str) -> None:
    costs = [cost(record) for record in records]
    scores = [float(record.top1) for record in records]  # type: ignore[arg-type]
    _scatter_with_labels(axes, costs, scores, [record.name for record in records])
    front = pareto_front(costs, scores)
    axes.plot([costs[i] for i in front], [scores[i] for i in front], color="tab:red", linewidth=1.2,
              marker="o", markerfacecolor="none", markersize=9, label="Pareto front", zorder=2)
    axes.set_xlabel(cost_label)
    axes.set_ylabel("top-1 accuracy (%)")
    axes.legend(loc="best", fontsize=8)


def _latency(record: ProfileRecord) -> float:
    return record.latency_ms_median


def _gflops(record: ProfileRecord) -> float:
    return record.flops / 1e9


def _draw_accuracy_tradeoffs(figure: Figure, records: Sequence[ProfileRecord]) -> None:
    with_accuracy = [record for record in records if record.top1 is not None]
    without_accuracy = [record.name for record in records if record.top1 is None]
    latency_axes, flops_axes = figure.subplots(1, 2)
    _accuracy_panel(latency_axes, with_accuracy, _latency, f"latency, batch 1 (ms, {records[0].device})")
    _accuracy_panel(flops_axes, with_accuracy, _gflops, "GFLOPs per image (1 multiply-add = 1 FLOP)")
    title = "Accuracy vs cost (Pareto front in red)"
    if without_accuracy:
        title += f"; no accuracy for: {', '.join(without_accuracy)}"
    figure.suptitle(title, fontsize=10)


def _draw_cost_only(figure: Figure, records: Sequence[ProfileRecord]) -> None:
    axes = figure.subplots(1, 1)
    _scatter_with_labels(axes, [_gflops(r) for r in records], [_latency(r) for r in records],
                         [record.name for record in records])
    axes.set_xlabel("GFLOPs per image (1 multiply-add = 1 FLOP)")
    axes.set_ylabel(f"latency, batch 1 (ms, {records[0].device})")
    figure.suptitle("Latency vs FLOPs (no accuracy measured, so no Pareto front)", fontsize=10)


def plot_tradeoffs(records: Sequence[ProfileRecord], path: str | os.PathLike[str]) -> Path:
    """Draw the trade-off figure for `records` (see the module docstring) and write it to `path` as PNG.

    The file is written to a temporary name and renamed, so it is either complete or absent. Point labels are
    the record names, cut to 32 characters (the tables carry the full names).
    """
    if not records:
        raise ValueError("no records to plot")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    has_accuracy = any(record.top1 is not None for record in records)
    figure = Figure(figsize=(12, 5) if has_accuracy else (7, 5), layout="constrained")
    FigureCanvasAgg(figure)
    draw = _draw_accuracy_tradeoffs if has_accuracy else _draw_cost_only
    draw(figure, records)
    image = io.BytesIO()
    figure.savefig(image, format="png", dpi=120)
    atomic_write(path, image.getvalue())
    return path
