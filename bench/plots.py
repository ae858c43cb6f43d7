"""The benchmarks' one chart: titles per second against a log2 x axis, one line per variant."""

from __future__ import annotations

from pathlib import Path


def log2_lines(path: Path, series: dict[str, list[tuple[int, float]]], xlabel: str, title: str,
               reference: tuple[str, float] | None = None) -> None:
    """Write a PNG of `series` (label -> (x, titles/s) points), with an optional dashed
    horizontal `reference` (label, value)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for label, points in series.items():
        points = sorted(points)
        axes.plot([x for x, _ in points], [y for _, y in points], marker="o", label=label)
    if reference is not None:
        axes.axhline(reference[1], color="gray", linestyle="--", label=reference[0])
    axes.set_xscale("log", base=2)
    axes.set_xlabel(xlabel)
    axes.set_ylabel("titles per second")
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
