"""Write the dictionary_learning fixtures of ``tests/test_sae_peers.py`` with dictionary_learning's own classes.

Each ``tests/data/dictionary_learning/<Class>/`` gets ``ae.pt`` (the class's ``state_dict()``, as its trainers
save it), ``config.json`` (the trainer/buffer layout its ``training.py`` writes) and ``io.pt`` (inputs ``x`` and
that class's own ``encode(x)`` and ``forward(x)``). Run it where dictionary_learning 0.1.0 is installed:

    python tests/peers/make_dictionary_learning.py

The package's ``__init__`` imports nnsight (for its activation buffer, not needed here), so the dictionary
modules are imported without running it.
"""
from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path

import torch

OUT = Path(__file__).resolve().parents[1] / "data" / "dictionary_learning"
D_IN, D_SAE, K, LAYER = 16, 64, 6, 3


def import_classes():
    spec = importlib.util.find_spec("dictionary_learning")
    if spec is None:
        raise SystemExit("dictionary_learning is not installed")
    pkg = types.ModuleType("dictionary_learning")
    pkg.__path__ = list(spec.submodule_search_locations)
    sys.modules["dictionary_learning"] = pkg
    from dictionary_learning.dictionary import AutoEncoder, GatedAutoEncoder, JumpReluAutoEncoder
    from dictionary_learning.trainers.batch_top_k import BatchTopKSAE
    from dictionary_learning.trainers.matryoshka_batch_top_k import MatryoshkaBatchTopKSAE
    from dictionary_learning.trainers.top_k import AutoEncoderTopK

    from importlib.metadata import version

    return version("dictionary-learning"), {"AutoEncoder": lambda: AutoEncoder(D_IN, D_SAE),
                     "AutoEncoderTopK": lambda: AutoEncoderTopK(D_IN, D_SAE, K),
                     "BatchTopKSAE": lambda: BatchTopKSAE(D_IN, D_SAE, K),
                     "MatryoshkaBatchTopKSAE": lambda: MatryoshkaBatchTopKSAE(D_IN, D_SAE, K, [8, 24, 32]),
                     "JumpReluAutoEncoder": lambda: JumpReluAutoEncoder(D_IN, D_SAE),
                     "GatedAutoEncoder": lambda: GatedAutoEncoder(D_IN, D_SAE)}


def main() -> None:
    version, classes = import_classes()
    print(f"dictionary_learning {version}")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(24, D_IN, generator=g) * 2 + 0.3
    for name, make in classes.items():
        ae = make()
        with torch.no_grad():
            for pname, p in ae.named_parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.4)
                if pname == "threshold":
                    p.abs_()
            if hasattr(ae, "threshold") and ae.threshold.ndim == 0:  # a trained (Batch)TopK threshold
                ae.threshold.fill_(0.5)
            f = ae.encode(x)
            x_hat = ae(x)
        d = OUT / name
        d.mkdir(parents=True, exist_ok=True)
        torch.save(ae.state_dict(), d / "ae.pt")
        trainer = {"dict_class": name, "activation_dim": D_IN, "dict_size": D_SAE, "lr": 1e-3, "layer": LAYER,
                   "lm_name": "EleutherAI/pythia-70m-deduped", "submodule_name": f"resid_post_layer_{LAYER}",
                   "seed": 0}
        if "TopK" in name:
            trainer["k"] = K
        if name == "MatryoshkaBatchTopKSAE":
            trainer["group_fractions"] = [0.125, 0.375, 0.5]
        (d / "config.json").write_text(json.dumps({"trainer": trainer, "buffer": {
            "d_submodule": D_IN, "io": "out", "n_ctxs": 100, "ctx_len": 128, "refresh_batch_size": 8,
            "out_batch_size": 64, "device": "cpu"}}, indent=1))
        torch.save({"x": x, "f": f, "x_hat": x_hat, "version": version}, d / "io.pt")
        print(f"{name}: L0 {float((f > 0).sum(-1).float().mean()):.1f}")


if __name__ == "__main__":
    main()
