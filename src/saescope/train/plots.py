"""PNG plots of a finished run: training curves (loss, L0, explained variance, dead %) and the feature-density
histogram. Written beside the SAE with matplotlib's Agg backend."""
from __future__ import annotations

from pathlib import Path

from .._io import atomic_write_bytes
from . import checkpoint as ckpt


def _save(fig, path: Path) -> None:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    atomic_write_bytes(path, lambda f: f.write(buf.getvalue()))


def plot_run(out_dir) -> list[Path]:
    """Write ``training_curves.png`` and ``feature_density.png`` into ``out_dir``; returns the paths written."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    rows = ckpt.read_metrics(out / ckpt.METRICS_FILE)
    written = []
    if rows:
        tokens = [r["tokens"] for r in rows]
        panels = [("loss", "loss", True), ("l0", "L0", False), ("explained_variance", "explained variance", False),
                  ("dead_fraction", "dead fraction", False)]
        fig, axes = plt.subplots(1, 4, figsize=(16, 3.5))
        for ax, (key, title, logy) in zip(axes, panels):
            ax.plot(tokens, [r.get(key, float("nan")) for r in rows])
            ax.set_title(title)
            ax.set_xlabel("tokens")
            if logy:
                ax.set_yscale("log")
        fig.tight_layout()
        _save(fig, out / "training_curves.png")
        plt.close(fig)
        written.append(out / "training_curves.png")
    sp = out / "sparsity.safetensors"
    if sp.exists():
        from safetensors.torch import load_file

        log_density = load_file(str(sp))["sparsity"].float()
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.hist(log_density.clamp_min(-10).numpy(), bins=60)
        ax.set_xlabel("log10 feature density")
        ax.set_ylabel("latents")
        ax.set_title(f"feature density ({int((log_density <= -9.99).sum())} never fired)")
        fig.tight_layout()
        _save(fig, out / "feature_density.png")
        plt.close(fig)
        written.append(out / "feature_density.png")
    return written
