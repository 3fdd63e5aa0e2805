"""GPT-2 small's published ``config.json`` (openai-community/gpt2; its values are public facts) and config-only
offline hub repos for the memory planner: the planner reads configs, never weights."""
from __future__ import annotations

import json
from pathlib import Path

from hubcache import add_repo

GPT2_SMALL_CONFIG = {
    "activation_function": "gelu_new", "architectures": ["GPT2LMHeadModel"], "attn_pdrop": 0.1,
    "bos_token_id": 50256, "embd_pdrop": 0.1, "eos_token_id": 50256, "initializer_range": 0.02,
    "layer_norm_epsilon": 1e-05, "model_type": "gpt2", "n_ctx": 1024, "n_embd": 768, "n_head": 12, "n_layer": 12,
    "n_positions": 1024, "resid_pdrop": 0.1, "summary_activation": None, "summary_first_dropout": 0.1,
    "summary_proj_to_labels": True, "summary_type": "cls_index", "summary_use_proj": True,
    "task_specific_params": {"text-generation": {"do_sample": True, "max_length": 50}}, "vocab_size": 50257,
}
GPT2_SMALL_PARAMS = 124_439_808      # the published parameter count (tied embeddings counted once)

V5_128K_REPO = "jbloom/GPT2-Small-OAI-v5-128k-resid-post-SAEs"


def v5_128k_cfg(layer: int) -> dict:
    """A SAELens cfg.json of OpenAI's v5 128k TopK SAE on blocks.{layer}.hook_resid_post (d_sae 131,072, k 32)."""
    return {"architecture": "topk", "d_in": 768, "d_sae": 131072, "k": 32, "dtype": "float32", "device": "cpu",
            "apply_b_dec_to_input": True, "normalize_activations": "layer_norm",
            "metadata": {"model_name": "gpt2-small", "hook_name": f"blocks.{layer}.hook_resid_post",
                         "prepend_bos": True, "context_size": 64, "sae_lens_version": "6.0.0"}}


def publish_gpt2_small_configs(cache: Path, layers=range(12)) -> None:
    """The real GPT-2 small config.json as 'gpt2' and the v5 128k cfg.json files: configs only, no weights."""
    add_repo(cache, "gpt2", {"config.json": json.dumps(GPT2_SMALL_CONFIG).encode()})
    add_repo(cache, V5_128K_REPO, {f"v5_128k_layer_{i}/cfg.json": json.dumps(v5_128k_cfg(i)).encode() for i in layers})
