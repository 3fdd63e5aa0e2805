"""``saescope demo``: the offline tour of the bundled model and SAE (read, steer, ablate, HTML report)."""
from __future__ import annotations

import time
from pathlib import Path

from .._io import atomic_write_text
from .common import add_model_args

_MARK = "<title>saescope demo</title>"


def _demo(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from ..assets import TINY, TINY_DEFAULT_SAE
    from ..errors import InputError
    from ..report.tour import TourConfig, render_html, run_tour
    from .common import load_model, load_sae

    console = Console(highlight=False)
    t0 = time.time()
    out = Path(args.out)
    if out.exists() and (out.is_dir() or _MARK not in out.read_text(encoding="utf-8", errors="replace")[:400]):
        raise InputError(f"{out} exists and is not an earlier saescope demo report; choose another --out")
    lm = load_model(args)
    sae = load_sae(args, lm)
    config = TourConfig.from_file(TINY / "demo.json") if args.model in (None, "tiny") and args.sae is None else TourConfig()
    console.print(f"[bold]saescope demo[/] — model [cyan]{lm.name}[/] ({lm.info.n_layers} layers, d_model {lm.info.d_model}), "
                  f"SAE [cyan]{args.sae or 'tiny:' + TINY_DEFAULT_SAE}[/] ({sae.cfg.architecture}, {sae.d_sae} features) "
                  f"at {sae.cfg.metadata.hook_name}")
    tour = run_tour(lm, sae, config)

    console.print(f"\n[bold]1. Reading[/] — top features per token of: [italic]{config.sentence}[/]")
    table = Table(show_header=True, header_style="bold")
    for col in ("pos", "token", "top features (index · activation · label)"):
        table.add_column(col)
    shown = tour.shown_tokens or [r.token for r in tour.read.tokens]     # split characters merged
    for row in tour.read.tokens:
        feats = "\n".join(f"#{f.index} · {f.activation:.2f} · {tour.labels.get(f.index, '')}" for f in row.features)
        table.add_row(str(row.position), repr(shown[row.position]), feats)
    console.print(table)
    console.print(f"mean L0 {tour.read.mean_l0:.1f} features per token; {tour.read.percent_active:.2f}% of features active")

    c = config
    console.print(f"\n[bold]2. Steering[/] — add feature #{c.steer_feature} ([italic]{tour.labels.get(c.steer_feature, '')}[/]) "
                  f"× {c.steer_strength:g} at every position, prompt [italic]{c.steer_prompt!r}[/]")
    side = Table(show_header=True, header_style="bold", show_lines=True)
    side.add_column("sample")
    side.add_column("baseline")
    side.add_column("steered")
    for i, (base, steered) in enumerate(tour.samples[:3]):
        side.add_row(str(i), c.steer_prompt + base, c.steer_prompt + steered)
    console.print(side)
    if tour.concept_rank is not None:
        console.print(f"the feature's logit lens ranks “{c.steer_word.strip()}” #{tour.concept_rank} of {lm.info.d_vocab} tokens")
    console.print(f"“{c.steer_word.strip()}” appears in [bold]{tour.baseline_hits}/{len(tour.samples)}[/] baseline samples "
                  f"and [bold]{tour.steered_hits}/{len(tour.samples)}[/] steered samples (same random draws)")

    console.print(f"\n[bold]3. Ablation[/] — feature #{c.ablate_feature} ([italic]{tour.labels.get(c.ablate_feature, '')}[/]) "
                  f"set to 0, SAE error kept, on [italic]{c.ablate_text!r}[/]")
    abl = Table(show_header=True, header_style="bold")
    abl.add_column("next token (normal)")
    abl.add_column("p")
    abl.add_column("next token (ablated)")
    abl.add_column("p")
    for a, b in zip(tour.ablation_before, tour.ablation_after):
        abl.add_row(repr(a.token), f"{a.probability:.3f}", repr(b.token), f"{b.probability:.3f}")
    console.print(abl)
    g = tour.ablation_generation
    console.print(f"greedy, normal:  {c.ablate_text}[green]{g.baseline}[/]\ngreedy, ablated: {c.ablate_text}[red]{g.steered}[/]")

    page = render_html(tour, lm.name, args.sae or f"tiny:{TINY_DEFAULT_SAE}")
    atomic_write_text(out, page)
    console.print(f"\nreport: [bold]{out.resolve()}[/]  ({time.time() - t0:.1f}s)")
    return 0


def register(sub) -> None:
    p = sub.add_parser("demo", help="offline tour: read, steer and ablate with the bundled model; writes an HTML report")
    add_model_args(p)
    p.add_argument("--out", default="saescope-demo.html", help="where to write the HTML report (default: ./saescope-demo.html; an earlier report there is replaced)")
    p.set_defaults(handler=_demo)
