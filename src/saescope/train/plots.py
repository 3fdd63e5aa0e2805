"""PNG plots of a finished run: training curves (loss, L0, explained variance, dead %) and the feature-density
histogram, written beside the SAE. Drawn on ``matplotlib.figure.Figure`` objects (no pyplot state, so an
interactive session's backend is left alone). Tick positions come from ``MaxNLocator`` with few bins and the token
axis is labelled in engineering units (``200k``, ``1.2M``), so labels stay apart on short and long runs alike."""
from __future__ import annotations

from pathlib import Path

from .._io import atomic_write_bytes
from . import checkpoint as ckpt

PANELS = (("loss", "loss", True), ("l0", "L0", False), ("explained_variance", "explained variance", False),
          ("dead_fraction", "dead fraction", False))


def _save(fig, path: Path) -> None:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    atomic_write_bytes(path, lambda f: f.write(buf.getvalue()))


def curves_figure(rows: list[dict]):
    """Metrics rows (``metrics.jsonl``) -> a Figure with one panel per curve, against training tokens."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import EngFormatter, MaxNLocator

    tokens = [r["tokens"] for r in rows]
    fig = Figure(figsize=(16, 3.5))
    axes = fig.subplots(1, len(PANELS))
    for ax, (key, title, logy) in zip(axes, PANELS):
        ax.plot(tokens, [r.get(key, float("nan")) for r in rows])
        ax.set_title(title)
        ax.set_xlabel("tokens")
        ax.xaxis.set_major_locator(MaxNLocator(nbins=4, integer=True, min_n_ticks=2))
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))
        if logy:
            ax.set_yscale("log")
    fig.tight_layout()
    return fig


def density_figure(log_density):
    """log10 feature densities [d_sae] -> a histogram Figure."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    ax.hist(log_density.clamp_min(-10).numpy(), bins=60)
    ax.set_xlabel("log10 feature density")
    ax.set_ylabel("latents")
    ax.set_title(f"feature density ({int((log_density <= -9.99).sum())} never fired)")
    fig.tight_layout()
    return fig


def plot_run(out_dir) -> list[Path]:
    """Write ``training_curves.png`` and ``feature_density.png`` into ``out_dir``; returns the paths written."""
    out = Path(out_dir)
    rows = ckpt.read_metrics(out / ckpt.METRICS_FILE)
    written = []
    if rows:
        _save(curves_figure(rows), out / "training_curves.png")
        written.append(out / "training_curves.png")
    sp = out / "sparsity.safetensors"
    if sp.exists():
        from safetensors.torch import load_file

        _save(density_figure(load_file(str(sp))["sparsity"].float()), out / "feature_density.png")
        written.append(out / "feature_density.png")
    return written
