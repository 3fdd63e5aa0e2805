"""Shared by the graph tests and benchmarks/bench_graph.py: random per-layer transcoders for a model, saved in
saescope's format and in circuit-tracer's SingleLayerTranscoder layout, and the circuit-tracer peer runner."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from saescope.sae import SAE, SAEConfig
from saescope.sae.config import SAEMetadata

PEER = Path(__file__).resolve().parent / "ct" / "ct_graph.py"


def random_transcoders(lm, d_sae: int = 256, threshold: float = 2.0, seed: int = 0, skip: bool = True,
                       model_name: str | None = None) -> list[SAE]:
    """One ReLU transcoder per layer (ln2.hook_normalized -> hook_mlp_out) with random weights; ``threshold`` (a
    negative encoder bias) keeps a few features per token active."""
    d = lm.info.d_model
    out = []
    g = torch.Generator().manual_seed(seed)
    for L in range(lm.info.n_layers):
        cfg = SAEConfig("relu", d_in=d, d_sae=d_sae, d_out=d, skip=skip, metadata=SAEMetadata(
            model_name=model_name or lm.name, hook_name=f"blocks.{L}.ln2.hook_normalized",
            hook_name_out=f"blocks.{L}.hook_mlp_out", prepend_bos=True))
        sae = SAE(cfg, seed=seed + L)
        with torch.no_grad():
            sae.b_enc.copy_(-threshold + 0.5 * torch.rand(d_sae, generator=g))
            sae.W_dec.mul_(0.5)
            sae.b_dec.copy_(0.05 * torch.randn(d, generator=g))
            if skip:
                sae.W_skip.copy_(0.05 * torch.randn(d, d, generator=g))
        out.append(sae.to(lm.device))
    return out


@torch.no_grad()
def realistic_embedding_scale(lm, std: float = 0.5) -> None:
    """Scale a random GPT-2's token and position embeddings (init std 0.02) to entry std ``std``, so that the
    residual stream has a trained model's scale: at init every frozen LayerNorm scale is ~50 and direct effects are
    large terms that cancel (float32 then loses the 1e-4 absolute completeness to rounding)."""
    tr = lm.hf_model.transformer
    for emb in (tr.wte, tr.wpe):
        emb.weight.mul_(std / float(emb.weight.std()))


def save_circuit_tracer_layout(transcoders, folder) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for L, t in enumerate(transcoders):
        w = {"W_enc": t.W_enc.detach().T.contiguous().cpu(), "W_dec": t.W_dec.detach().contiguous().cpu(),
             "b_enc": t.b_enc.detach().cpu(), "b_dec": t.b_dec.detach().cpu()}
        if t.cfg.skip:
            w["W_skip"] = t.W_skip.detach().contiguous().cpu()
        save_file(w, str(folder / f"layer{L}.safetensors"))
    return folder


def peer_python() -> str:
    """The interpreter that runs circuit-tracer: $SAESCOPE_CIRCUIT_TRACER_PYTHON, else this one."""
    return os.environ.get("SAESCOPE_CIRCUIT_TRACER_PYTHON", sys.executable)


def peer_unavailable() -> str | None:
    """Why circuit-tracer (TransformerLens backend) cannot run here, or None."""
    if peer_python() == sys.executable:        # cheap in-process checks first (a failed import costs seconds)
        import importlib.util

        if importlib.util.find_spec("circuit_tracer") is None:
            return "circuit-tracer is not installed"
        import huggingface_hub.constants as hc

        if not hasattr(hc, "HF_HUB_ENABLE_HF_TRANSFER"):
            return (f"circuit-tracer 0.5.0 needs huggingface_hub < 1.0 (installed: {huggingface_hub_version()}); "
                    "set SAESCOPE_CIRCUIT_TRACER_PYTHON to an interpreter where it imports")
    code = ("from circuit_tracer.replacement_model.replacement_model_transformerlens import "
            "TransformerLensReplacementModel")
    r = subprocess.run([peer_python(), "-c", code], capture_output=True, text=True, timeout=300)
    if r.returncode:
        return f"circuit-tracer does not import in {peer_python()}: {r.stderr.strip().splitlines()[-1]}"
    return None


def huggingface_hub_version() -> str:
    from importlib.metadata import version

    return version("huggingface_hub")


def run_peer(model_dir, tc_dir, ids: list[int], work, batch: int = 64) -> tuple[dict, dict]:
    """circuit-tracer's graph on the same weights: (tensors, {"seconds", versions})."""
    work = Path(work)
    (work / "ids.json").write_text(json.dumps(ids))
    out = work / "ct_graph.safetensors"
    r = subprocess.run([peer_python(), str(PEER), str(model_dir), str(tc_dir), str(work / "ids.json"), str(out),
                        str(batch)], capture_output=True, text=True, timeout=1200,
                       env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    if r.returncode:
        raise RuntimeError(f"circuit-tracer run failed:\n{r.stderr[-3000:]}")
    return load_file(str(out)), json.loads(r.stdout.strip().splitlines()[-1])
