"""PNG plots of evaluation results (matplotlib figures drawn without pyplot, so an interactive session's backend is
left alone; written atomically)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from .._io import atomic_write_path
from ..errors import InputError


def _get(result: Any, key: str):
    return result[key] if isinstance(result, dict) else getattr(result, key)


def check_plot_path(path: str | os.PathLike) -> Path:
    """Raise `InputError` unless ``path`` is a .png in an existing directory (call before long work)."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise InputError(f"plot path {path} must end in .png")
    if not path.parent.is_dir():
        raise InputError(f"plot path {path}: directory {path.parent} does not exist")
    return path


def _save(fig, path: str | os.PathLike) -> Path:
    path = check_plot_path(path)
    atomic_write_path(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))
    return path


def plot_l0_vs_ev(results: Sequence[Any], path: str | os.PathLike, labels: Sequence[str] | None = None,
                  title: str = "Sparsity vs reconstruction") -> Path:
    """Scatter of L0 (x, log scale) against explained variance (y) for several SAEs, one labelled point each.

    ``results``: `EvalResult`s or their ``to_dict()``s; ``labels`` default to each result's ``sae`` name."""
    from matplotlib.figure import Figure

    if not results:
        raise InputError("plot_l0_vs_ev: no results to plot")
    labels = list(labels) if labels is not None else [str(_get(r, "sae")) for r in results]
    xs = [float(_get(r, "l0")) for r in results]
    ys = [float(_get(r, "explained_variance")) for r in results]
    fig = Figure(figsize=(6, 4.5))
    ax = fig.subplots()
    ax.scatter(xs, ys, zorder=3)
    for x, y, label in zip(xs, ys, labels):
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    if all(x > 0 for x in xs):
        ax.set_xscale("log")
    ax.set_xlabel("L0 (mean active features per token)")
    ax.set_ylabel("explained variance")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    return _save(fig, path)


def plot_density_histogram(result: Any, path: str | os.PathLike, title: str | None = None) -> Path:
    """Bar plot of the log10 feature-density histogram of one `EvalResult` (dead features noted in the title)."""
    from matplotlib.figure import Figure

    hist = _get(result, "density_histogram")
    hist = hist if isinstance(hist, dict) else hist.to_dict()
    edges, counts = hist["edges"], hist["counts"]
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    widths = [b - a for a, b in zip(edges[:-1], edges[1:])]
    ax.bar(edges[:-1], counts, width=widths, align="edge")
    ax.set_xlabel("log10(feature density)")
    ax.set_ylabel("features")
    ax.set_title(title or f"Feature density ({hist['dead']} dead)")
    return _save(fig, path)
