"""Attribution-graph time for a 16-token prompt, side by side in one run:

* saescope on the bundled tiny model (its bundled transcoders when installed, else random ones of the same shape);
* saescope and circuit-tracer 0.5.0 (TransformerLens backend, subprocess) on a GPT-2-small-shaped model (12 layers,
  d_model 768, random weights) with the same random per-layer skip transcoders (d_sae 4096).

    SAESCOPE_CIRCUIT_TRACER_PYTHON=<python with circuit-tracer> python benchmarks/bench_graph.py [--small]

``--small``: a 4-layer GPT-2-small-width model instead (fast check).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import graph_case  # noqa: E402

from saescope.graph import ReplacementModel, attribute, load_transcoders  # noqa: E402
from saescope.lm import LanguageModel  # noqa: E402

PROMPT_IDS = 16


def _ours(lm, tcs, ids, batch):
    rm = ReplacementModel(lm, tcs)
    t0 = time.perf_counter()
    att = attribute(rm, ids, batch_size=batch, quiet=True)
    return time.perf_counter() - t0, att.n_features


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2, help="alternate saescope and circuit-tracer; report the minimum")
    args = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    rows = {}
    lm = LanguageModel.from_pretrained("tiny", dtype=torch.float32)
    try:
        tcs, kind = load_transcoders(lm), "bundled"
    except Exception:
        tcs, kind = graph_case.random_transcoders(lm, d_sae=2048, threshold=3.0), "random"
    g = torch.Generator().manual_seed(0)
    ids = torch.cat([torch.zeros(1, 1, dtype=torch.long), torch.randint(1, 4096, (1, PROMPT_IDS - 1), generator=g)], 1)
    rows["tiny"] = dict(zip(("saescope_s", "features"), _ours(lm, tcs, ids, args.batch)), transcoders=kind)
    import transformers as tf
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        n_layers = 4 if args.small else 12
        torch.manual_seed(0)
        hf = tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=n_layers, n_head=12))
        hf.save_pretrained(tmp / "gpt2")
        from saescope.assets import tiny_model_dir
        for name in ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json"):
            (tmp / "gpt2" / name).write_bytes((tiny_model_dir() / name).read_bytes())
        lm = LanguageModel.from_pretrained(str(tmp / "gpt2"), dtype=torch.float32)
        graph_case.realistic_embedding_scale(lm)
        hf_scaled = lm.hf_model
        hf_scaled.save_pretrained(tmp / "gpt2")      # the peer reads the same (scaled) weights
        tcs = graph_case.random_transcoders(lm, d_sae=4096, threshold=3.0)
        graph_case.save_circuit_tracer_layout(tcs, tmp / "tc")
        why = graph_case.peer_unavailable()
        ours, theirs = [], []
        for _ in range(args.repeats):          # alternated, so that both see the same machine load
            sec, n_feat = _ours(lm, tcs, ids, args.batch)
            ours.append(sec)
            if not why:
                _, info = graph_case.run_peer(tmp / "gpt2", tmp / "tc", ids[0].tolist(), tmp, batch=args.batch)
                theirs.append(info["seconds"])
        row = {"saescope_s": ours, "features": n_feat, "layers": n_layers}
        if why:
            row["circuit_tracer"] = why
        else:
            row.update(circuit_tracer_s=theirs, ratio_of_minima=min(theirs) / min(ours), versions=info)
        rows["gpt2-small-shaped"] = row
    print(json.dumps({"date": time.strftime("%Y-%m-%d"), "torch_threads": torch.get_num_threads(),
                      "device": "cpu", "batch": args.batch, "results": rows}, indent=1))


if __name__ == "__main__":
    main()
