"""The offline tour behind ``saescope demo``: read, steer and ablate with the bundled model, then write an HTML report.

Everything here is a call into ``saescope.interp``; this module only chooses the examples (from the bundled
``demo.json``, written by scripts/build_tiny_saes.py), counts, and renders.
"""
from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..interp import feature_trace, generate_steered, read_features
from ..interp.read import ReadResult
from ..interp.steer import Intervention, SteerResult, steer
from ..lm.tokens import display_tokens
from ..site import LENS, attach, lens_rank, load_labels


@dataclass(frozen=True)
class TourConfig:
    sentence: str = "The Emperor Napoleon rode out before the French army at dawn."
    steer_prompt: str = "He said that"
    steer_feature: int = 0
    steer_word: str = "war"            # the concept whose frequency the steering should raise
    steer_strength: float = 8.0
    ablate_text: str = "Prince Andrew looked at the"
    ablate_feature: int = 0
    samples: int = 20
    max_new_tokens: int = 30
    temperature: float = 1.0

    @classmethod
    def from_file(cls, path: str | Path) -> "TourConfig":
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


@dataclass
class NextToken:
    token: str
    probability: float


@dataclass
class Tour:
    config: TourConfig
    labels: dict[int, str]
    read: ReadResult
    heatmap_features: list[int]
    heatmap: list[list[float]]              # [feature][token]
    samples: list[tuple[str, str]]          # (baseline, steered) continuations, same random draws
    baseline_hits: int
    steered_hits: int
    ablation_before: list[NextToken]
    ablation_after: list[NextToken]
    ablation_generation: SteerResult
    concept_rank: int | None = None         # rank of the concept word in the steered feature's logit lens
    shown_tokens: list[str] | None = None   # read.tokens as displayed (split characters merged: lm.tokens.display_tokens)


def count_word(text: str, word: str) -> int:
    """Whole-word, case-insensitive occurrences of ``word`` (plural -s allowed)."""
    return len(re.findall(rf"\b{re.escape(word.strip())}s?\b", text, flags=re.IGNORECASE))


@torch.no_grad()
def _next_tokens(lm, sae, text: str, interventions=(), k: int = 5) -> list[NextToken]:
    ids = attach(lm, sae).tokens(text)
    if interventions:
        with steer(lm, sae, list(interventions)):
            logits = lm(ids)
    else:
        logits = lm(ids)
    probs = logits[0, -1].float().softmax(-1)
    top = probs.topk(k)
    return [NextToken(lm.to_string(torch.tensor([int(i)])), float(p)) for p, i in zip(top.values, top.indices)]


@torch.no_grad()
def sample_pairs(lm, sae, prompt: str, interventions, n: int, max_new_tokens: int, temperature: float,
                 seed: int = 0, top_p: float = 1.0) -> list[tuple[str, str]]:
    """n (baseline, steered) continuations of ``prompt``: one batched generation each, from the same seed, so
    row i of both batches draws the same random numbers."""
    ids = attach(lm, sae).tokens(prompt).repeat(n, 1)
    kw = dict(max_new_tokens=max_new_tokens, do_sample=temperature > 0, temperature=temperature or 1.0, seed=seed,
              top_p=top_p, prepend_bos=False)
    base = lm.generate(ids, **kw)[:, ids.shape[1]:]
    with steer(lm, sae, list(interventions)):
        steered = lm.generate(ids, **kw)[:, ids.shape[1]:]
    return [(lm.to_string(b), lm.to_string(s)) for b, s in zip(base, steered)]


def run_tour(lm, sae, config: TourConfig, heatmap_features: int = 12, seed: int = 0) -> Tour:
    labels = load_labels(sae)
    read = read_features(lm, sae, [config.sentence], top_k=3, labels=labels)[0]
    # heatmap rows: the features with the largest activation anywhere in the sentence (BOS excluded)
    best: dict[int, float] = {}
    for row in read.tokens[1:] if read.prepend_bos else read.tokens:
        for f in row.features:
            best[f.index] = max(best.get(f.index, 0.0), f.activation)
    feats = [f for f, _ in sorted(best.items(), key=lambda kv: -kv[1])[:heatmap_features]]
    heat = feature_trace(lm, sae, config.sentence, feats).activations.T.tolist() if feats else []

    push = Intervention(features=(config.steer_feature,), method="add", strength=config.steer_strength)
    samples = sample_pairs(lm, sae, config.steer_prompt, [push], config.samples, config.max_new_tokens,
                           config.temperature, seed)
    base_hits = sum(count_word(b, config.steer_word) > 0 for b, _ in samples)
    steer_hits = sum(count_word(s, config.steer_word) > 0 for _, s in samples)

    ablate = Intervention(features=(config.ablate_feature,), method="ablate")
    before = _next_tokens(lm, sae, config.ablate_text)
    after = _next_tokens(lm, sae, config.ablate_text, [ablate])
    ablation_gen = generate_steered(lm, sae, config.ablate_text, [ablate], max_new_tokens=20, temperature=0)
    return Tour(config, labels, read, feats, heat, samples, base_hits, steer_hits, before, after, ablation_gen,
                concept_rank=logit_lens_rank(lm, sae, config.steer_feature, " " + config.steer_word.strip()),
                shown_tokens=display_tokens(lm.tokenizer, [r.token_id for r in read.tokens]))


@torch.no_grad()
def logit_lens_rank(lm, sae, feature: int, word: str) -> int | None:
    """Rank (1 = most promoted) of ``word``'s token in the feature's logit lens (``saescope.site.LENS``, the
    same lens as ``saescope feature`` and the dashboards); None when the word is not a single token."""
    ids = lm.to_tokens(word, prepend_bos=False)[0]
    if len(ids) != 1:
        return None
    return lens_rank(lm, sae.feature_directions([feature])[0], int(ids[0]))


# ------------------------------------------------------------------------------------------------- HTML
_CSS = """
body{font:15px/1.45 system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.6em 0}td,th{padding:3px 6px;border:1px solid #e3e3e3;font-size:13px}
th{background:#f6f6f6}.tok{font-family:ui-monospace,monospace;white-space:pre}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:1em}.pair div{background:#f8f8f8;padding:.6em;border-radius:6px}
.hit{background:#ffe08a}.lab{color:#555;font-size:12px}.big{font-size:1.25em;font-weight:600}
"""


def _cell(v: float, vmax: float) -> str:
    a = 0 if vmax <= 0 else min(1.0, v / vmax)
    return f'<td style="background:rgba(230,80,30,{a:.2f})" title="{v:.3f}">{v:.1f}</td>' if v > 0 else "<td></td>"


def _mark(text: str, word: str) -> str:
    return re.sub(rf"(\b{re.escape(word.strip())}s?\b)", r'<span class="hit">\1</span>', html.escape(text), flags=re.IGNORECASE)


def render_html(tour: Tour, model_name: str, sae_name: str) -> str:
    c, e = tour.config, html.escape
    lab = lambda f: e(tour.labels.get(f, ""))  # noqa: E731
    toks = tour.shown_tokens or [r.token for r in tour.read.tokens]
    vmax = max((max(r) for r in tour.heatmap if r), default=0.0)
    heat_rows = "".join(
        f"<tr><th>#{f}<div class='lab'>{lab(f)}</div></th>{''.join(_cell(v, vmax) for v in row)}</tr>"
        for f, row in zip(tour.heatmap_features, tour.heatmap))
    heat = (f"<table><tr><th>feature</th>{''.join(f'<th class=tok>{e(t)}</th>' for t in toks)}</tr>{heat_rows}</table>")
    read_rows = "".join(
        f"<tr><td>{r.position}</td><td class=tok>{e(toks[r.position])}</td><td>"
        + "; ".join(f"#{f.index} ({f.activation:.2f}) <span class=lab>{lab(f.index)}</span>" for f in r.features)
        + "</td></tr>" for r in tour.read.tokens)
    pairs = "".join(
        f"<p>sample {i}</p><div class=pair><div>{e(c.steer_prompt)}<b>{_mark(b, c.steer_word)}</b></div>"
        f"<div>{e(c.steer_prompt)}<b>{_mark(s, c.steer_word)}</b></div></div>" for i, (b, s) in enumerate(tour.samples[:8]))
    nt = lambda rows: "".join(f"<tr><td class=tok>{e(r.token)}</td><td>{r.probability:.3f}</td></tr>" for r in rows)  # noqa: E731
    g = tour.ablation_generation
    all_labels = "".join(f"<tr><td>#{f}</td><td>{lab(f)}</td></tr>" for f in sorted(set(tour.heatmap_features) | {c.steer_feature, c.ablate_feature}))
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>saescope demo</title><style>{_CSS}</style></head><body>
<h1>saescope demo</h1><p>Model <b>{e(model_name)}</b>, SAE <b>{e(sae_name)}</b> at <code>{e(tour.read.hook)}</code>.
Mean L0 on the sentence {tour.read.mean_l0:.1f}; {tour.read.percent_active:.2f}% of features active.</p>
<h2>1. Reading: which features fire on which tokens</h2><p class=tok>{e(c.sentence)}</p>{heat}
<details><summary>top features per token</summary><table><tr><th>pos</th><th>token</th><th>top features</th></tr>{read_rows}</table></details>
<h2>2. Steering: add feature #{c.steer_feature} × {c.steer_strength:g}</h2>
<p>Label: <i>{lab(c.steer_feature)}</i>. Its logit lens ({e(LENS)}) ranks “{e(c.steer_word.strip())}”
#{tour.concept_rank} among all tokens. Over {len(tour.samples)} samples of “{e(c.steer_prompt)}”, the word
“{e(c.steer_word.strip())}” appears in <span class=big>{tour.baseline_hits}</span> baseline continuations and in
<span class=big>{tour.steered_hits}</span> steered ones (same random draws). Left: baseline; right: steered.</p>{pairs}
<h2>3. Ablation: feature #{c.ablate_feature} set to 0 (SAE error kept)</h2><p>Label: <i>{lab(c.ablate_feature)}</i>. Text: <span class=tok>{e(c.ablate_text)}</span></p>
<div class=pair><div><b>next token, normal</b><table>{nt(tour.ablation_before)}</table><p>greedy: {e(g.baseline)}</p></div>
<div><b>next token, ablated</b><table>{nt(tour.ablation_after)}</table><p>greedy: {e(g.steered)}</p></div></div>
<h2>Feature labels</h2><table>{all_labels}</table></body></html>"""
