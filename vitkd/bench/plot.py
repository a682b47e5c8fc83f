"""Trade-off plots of `ProfileRecord`s as a PNG.

With accuracy (any record has top-1): two panels, top-1 vs batch-1 latency and top-1 vs GFLOPs. The Pareto front
(no other model is both cheaper and at least as accurate) is drawn as a line through its points; records without
accuracy are left out of these panels and listed in the figure title.

Without accuracy there is no front to draw (both axes would be costs), so the figure shows one panel of latency vs
GFLOPs: how well FLOPs predict speed on this machine (convolutional models and ViTs often sit on different lines).

Each runtime has its own marker (torch: circle, onnxruntime: square, onnxruntime-int8: triangle) and each model its
own colour, so one model's rows in several runtimes read as one colour; a model's name labels its first point only.
FLOPs are shown in the unit that suits the numbers (MFLOPs below 1 GFLOP). Labels alternate above and below their
points in x order, and between left and right in the right half, so neighbouring names do not print over each other.

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


RUNTIME_MARKERS = {"torch": "o", "onnxruntime": "s", "onnxruntime-int8": "^"}


def _short_label(name: str, limit: int = 32) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"


def flops_unit(records: Sequence[ProfileRecord]) -> tuple[float, str]:
    """`(divisor, unit)` for the records' FLOPs: GFLOPs from 1e9 up, else MFLOPs (0.0078 GFLOPs reads 7.8 MFLOPs)."""
    largest = max((record.flops for record in records), default=0)
    return (1e9, "GFLOPs") if largest >= 1e9 else (1e6, "MFLOPs")


def label_offsets(xs: Sequence[float]) -> list[tuple[tuple[int, int], str]]:
    """Per point, the label's `(dx, dy)` offset in points and its horizontal alignment.

    Points are taken in x order; successive ones alternate above and below (so neighbours' names are a line
    apart), and points in the right half put their label on their left so names stay inside the axes.
    """
    order = sorted(range(len(xs)), key=lambda index: xs[index])
    placement: list[tuple[tuple[int, int], str]] = [((0, 0), "left")] * len(xs)
    for rank, index in enumerate(order):
        on_left = rank >= (len(xs) + 1) // 2
        dy = 5 if rank % 2 == 0 else -11
        placement[index] = ((-5, dy) if on_left else (5, dy), "right" if on_left else "left")
    return placement


def _scatter_with_labels(axes: Axes, xs: list[float], ys: list[float], records: Sequence[ProfileRecord]) -> None:
    colours = {name: f"C{index % 10}" for index, name in enumerate(dict.fromkeys(r.name for r in records))}
    for runtime, marker in RUNTIME_MARKERS.items():
        chosen = [index for index, record in enumerate(records) if record.runtime == runtime]
        if chosen:
            axes.scatter([xs[i] for i in chosen], [ys[i] for i in chosen], s=30, zorder=3, marker=marker,
                         c=[colours[records[i].name] for i in chosen], label=runtime)
    labelled = [index for index, record in enumerate(records)
                if index == next(i for i, other in enumerate(records) if other.name == record.name)]
    placements = label_offsets([xs[index] for index in labelled])
    for index, (offset, alignment) in zip(labelled, placements):
        annotation = axes.annotate(_short_label(records[index].name), (xs[index], ys[index]), fontsize=7,
                                   textcoords="offset points", xytext=offset, ha=alignment)
        annotation.set_in_layout(False)  # long names may run past the axes instead of squeezing the panels
    if xs and max(xs) > 20 * min(xs) > 0:
        axes.set_xscale("log")
        axes.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))  # 0.1 0.2 0.5 1 2 5 ..., not just decades
        axes.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        axes.xaxis.set_minor_formatter(NullFormatter())
    axes.margins(x=0.1, y=0.15)
    axes.grid(True, alpha=0.3)


def _legend(axes: Axes) -> None:
    """A legend whose runtime markers are grey: the colours stand for models, the markers for runtimes."""
    legend = axes.legend(loc="best", fontsize=8)
    for handle, text in zip(legend.legend_handles, legend.get_texts()):
        if text.get_text() in RUNTIME_MARKERS and handle is not None:
            handle.set_facecolor("0.45")
            handle.set_edgecolor("0.45")


def _accuracy_panel(axes: Axes, records: list[ProfileRecord], cost: Callable[[ProfileRecord], float],
                    cost_label: str) -> None:
    costs = [cost(record) for record in records]
    scores = [float(record.top1) for record in records]  # type: ignore[arg-type]
    _scatter_with_labels(axes, costs, scores, records)
    front = pareto_front(costs, scores)
    axes.plot([costs[i] for i in front], [scores[i] for i in front], color="tab:red", linewidth=1.2,
              marker="o", markerfacecolor="none", markersize=9, label="Pareto front", zorder=2)
    axes.set_xlabel(cost_label)
    axes.set_ylabel("top-1 accuracy (%)")
    _legend(axes)


def _latency(record: ProfileRecord) -> float:
    return record.latency_ms_median


def _draw_accuracy_tradeoffs(figure: Figure, records: Sequence[ProfileRecord]) -> None:
    with_accuracy = [record for record in records if record.top1 is not None]
    without_accuracy = [record.name for record in records if record.top1 is None]
    divisor, unit = flops_unit(records)
    latency_axes, flops_axes = figure.subplots(1, 2)
    _accuracy_panel(latency_axes, with_accuracy, _latency, f"latency, batch 1 (ms, {records[0].device})")
    _accuracy_panel(flops_axes, with_accuracy, lambda record: record.flops / divisor,
                    f"{unit} per image (1 multiply-add = 1 FLOP)")
    title = "Accuracy vs cost (Pareto front in red)"
    if without_accuracy:
        title += f"; no accuracy for: {', '.join(dict.fromkeys(without_accuracy))}"
    figure.suptitle(title, fontsize=10)


def _draw_cost_only(figure: Figure, records: Sequence[ProfileRecord]) -> None:
    axes = figure.subplots(1, 1)
    divisor, unit = flops_unit(records)
    _scatter_with_labels(axes, [r.flops / divisor for r in records], [_latency(r) for r in records], records)
    axes.set_xlabel(f"{unit} per image (1 multiply-add = 1 FLOP)")
    axes.set_ylabel(f"latency, batch 1 (ms, {records[0].device})")
    if len({record.runtime for record in records}) > 1:
        _legend(axes)
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
