"""Train, evaluate, label and describe the bundled SAE of the tiny model, with saescope's own pipeline.

Run after build_tiny_model.py; read top to bottom:

    python scripts/build_tiny_saes.py            # about 15 minutes on a 2-core CPU

1. harvest activations of the tiny model on the training split of ../shared/corpus (BOS excluded);
2. train the default SAE with ``saescope.train_sae``: TopK on blocks.2.hook_resid_pre (the MLP transcoders are
   scripts/build_tiny_transcoders.py's);
3. store it in fp16 inside the package (``saescope/assets/tiny/saes/<id>/``);
4. evaluate each with ``saescope.evaluate_sae`` on the held-out slice of War and Peace (eval.json beside it);
5. label every feature (labels.json), compute dashboard statistics for the default SAE (features.sqlite);
6. pick the demo's steering feature: one whose logit lens promotes a visible concept word, keeping the
   one whose steering raises that word's frequency the most over seeded samples (demo.json).
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch

from corpus import train_and_held_out
from saescope import LanguageModel, SAE, TrainConfig, evaluate_sae, train_sae
from saescope.assets import TINY, tiny_sae_dir
from saescope.data import token_contexts
from saescope.interp.autolabel import make_labels, save_labels
from saescope.interp.steer import Intervention, steer
from saescope.report import StatsConfig, compute_feature_stats
from saescope.report.tour import TourConfig, count_word, sample_pairs

SAES = {
    # id: (hook, train config overrides)
    "resid2-topk": ("blocks.2.hook_resid_pre", dict(architecture="topk", d_sae=4096, k=32)),
}
CONCEPTS = [" war", " love", " king", " God", " death", " Napoleon", " horse", " army", " blood", " money", " French"]


@torch.no_grad()
def harvest(lm, contexts: torch.Tensor, hooks: list[str], batch: int = 64) -> dict[str, torch.Tensor]:
    """Activations at each hook for every non-BOS token: {hook: [N, d_model]}."""
    out = {h: [] for h in hooks}
    for s in range(0, len(contexts), batch):
        acts = lm.run(contexts[s:s + batch], capture=hooks)
        for h in hooks:
            out[h].append(acts[h][:, 1:].reshape(-1, acts[h].shape[-1]))
    return {h: torch.cat(v) for h, v in out.items()}


@torch.no_grad()
def choose_demo(lm, sae, contexts: torch.Tensor, prompt: str, ablate_text: str, n: int = 20) -> dict:
    """The demo's examples: the (concept, feature, strength) whose additive steering raises the concept word's
    frequency the most over n samples, and the feature whose ablation moves the next-token distribution most."""
    hook = sae.cfg.metadata.hook_name
    resid_norm = float(lm.run(contexts[:64], capture=[hook])[hook][:, 1:].norm(dim=-1).median())
    directions = sae.feature_directions().float()
    lens = directions @ lm.unembed_matrix().float()                      # [d_sae, vocab]
    best = None
    for word in CONCEPTS:
        ids = lm.to_tokens(word, prepend_bos=False)[0]
        if len(ids) != 1:
            continue
        for f in lens[:, ids[0]].topk(3).indices.tolist():
            for alpha in (0.5, 1.0, 2.0):
                strength = round(alpha * resid_norm / float(directions[f].norm()), 2)
                push = Intervention(features=(f,), method="add", strength=strength)
                pairs = sample_pairs(lm, sae, prompt, [push], n, 30, 1.0, 0)
                base = sum(count_word(b, word) > 0 for b, _ in pairs)
                hits = sum(count_word(s, word) > 0 for _, s in pairs)
                gain = hits - base - alpha  # prefer the gentler push at equal gain
                if best is None or gain > best[0]:
                    best = (gain, dict(steer_feature=f, steer_word=word.strip(), steer_strength=strength,
                                       baseline_hits=base, steered_hits=hits))
                print(f"  steer {word!r} f{f} ×{strength}: {base}/{n} -> {hits}/{n}")
    ids = lm.to_tokens(ablate_text, prepend_bos=True)
    feats = sae.encode(lm.run(ids, capture=[hook])[hook])[0, -1]
    clean = lm(ids)[0, -1].log_softmax(-1)
    kl = {}
    for f in feats.nonzero().flatten().tolist():
        with steer(lm, sae, [Intervention(features=(f,), method="ablate")]):
            ablated = lm(ids)[0, -1].log_softmax(-1)
        kl[f] = float((clean.exp() * (clean - ablated)).sum())
    ablate_feature = max(kl, key=kl.get)
    return {"steer_prompt": prompt, **best[1], "ablate_text": ablate_text, "ablate_feature": ablate_feature,
            "ablate_kl": round(kl[ablate_feature], 4), "samples": n}


def evaluate_and_label(lm, sae_id: str, hook: str, held_out: str, contexts: torch.Tensor, ctx: int,
                       minutes: float | None) -> dict:
    """eval.json (``saescope eval`` on the held-out slice) and labels.json of a bundled SAE; its report row."""
    dst = tiny_sae_dir(sae_id)
    sae = SAE.load(dst, dtype=torch.float32)
    result = evaluate_sae(lm, sae, [held_out], tokens=42_000, context_size=ctx)
    (dst / "eval.json").write_text(json.dumps(result.to_dict(), indent=1) + "\n")
    save_labels(make_labels(lm, sae, contexts[:800]), dst)
    row = {"hook": hook, **{k: result.to_dict()[k] for k in (
        "l0", "explained_variance", "ce_loss_recovered", "kl_score", "dead_fraction", "tokens")}}
    old = json.loads((TINY / "saes" / "report.json").read_text()).get(sae_id, {})
    row["train_minutes"] = minutes if minutes is not None else old.get("train_minutes")
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=6_000_000, help="training tokens per SAE")
    p.add_argument("--stats-tokens", type=int, default=200_000)
    p.add_argument("--only", nargs="*", default=None, help="SAE ids to (re)build")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-train", action="store_true", help="keep the trained SAEs; redo evals, labels, statistics and demo choice")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--model", default="tiny", help="model to harvest from (a path for dry runs)")
    p.add_argument("--max-contexts", type=int, default=None, help="cap the harvested contexts (dry runs)")
    args = p.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    lm = LanguageModel.from_pretrained(args.model)
    parts = train_and_held_out()
    train_text = "".join(t for t, _ in parts.values())
    held_out_wp = parts["war_and_peace.txt"][1]
    ctx = 128
    # consecutive BOS-prefixed windows of the training text, in order
    contexts = torch.stack(list(token_contexts(lm, [train_text], ctx, shuffle_buffer=0)))[: args.max_contexts]
    hooks = sorted({h for h, _ in SAES.values()})
    t0 = time.time()
    acts = {} if args.skip_train else harvest(lm, contexts, hooks)
    if acts:
        print(f"harvested {len(contexts) * (ctx - 1):,} tokens at {hooks} in {time.time() - t0:.0f}s")

    report = {}
    for sae_id, (hook, overrides) in SAES.items():
        if args.only and sae_id not in args.only:
            continue
        minutes = None
        if not args.skip_train:
            cfg = TrainConfig(batch_size=4096, total_tokens=args.tokens, lr=4e-4, seed=args.seed, model="tiny", hook=hook,
                              dataset="shared/corpus: tinyshakespeare + war_and_peace, train split (95%)",
                              context_size=ctx, prepend_bos=True, plots=True, **overrides)
            work = Path(tempfile.mkdtemp(prefix=f"tiny-{sae_id}-"))
            t0 = time.time()
            train_sae(acts[hook], cfg, out_dir=work / "run")
            minutes = round((time.time() - t0) / 60, 1)
            dst = tiny_sae_dir(sae_id)
            if dst.exists():
                shutil.rmtree(dst)
            SAE.load(work / "run").to(torch.float16).save(dst)
            for plot in (work / "run").glob("*.png"):
                shutil.copy(plot, dst / plot.name)
        report[sae_id] = evaluate_and_label(lm, sae_id, hook, held_out_wp, contexts, ctx, minutes)
        print(sae_id, json.dumps(report[sae_id]))
    if not args.only or "resid2-topk" in args.only:
        sae = SAE.load(tiny_sae_dir("resid2-topk"), dtype=torch.float32)
        t0 = time.time()
        shuffled = contexts[torch.randperm(len(contexts), generator=torch.Generator().manual_seed(args.seed))]
        compute_feature_stats(lm, sae, shuffled, StatsConfig(n_tokens=args.stats_tokens, top_k=5, window=5, n_intervals=4,
                                                                         samples_per_interval=2),
                              out=tiny_sae_dir("resid2-topk") / "features.sqlite")
        print(f"feature statistics over {args.stats_tokens:,} tokens in {time.time() - t0:.0f}s")
        defaults = TourConfig()
        demo = choose_demo(lm, sae, contexts, defaults.steer_prompt, defaults.ablate_text)
        demo["sentence"] = defaults.sentence
        (TINY / "demo.json").write_text(json.dumps(demo, indent=1) + "\n")
        print("demo:", demo)
    old = json.loads((TINY / "saes" / "report.json").read_text()) if (TINY / "saes" / "report.json").exists() else {}
    (TINY / "saes" / "report.json").write_text(json.dumps({**old, **report}, indent=1) + "\n")


if __name__ == "__main__":
    main()
