"""Small random-weight models, one per supported family, saved as HF directories (shared by the lm tests).

``make(kind, out)`` writes config.json + model.safetensors + the bundled tokenizer into ``out``. Norm weights and
biases are perturbed so that a wrong norm convention (offset, centering, missing bias) shows in the numbers.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = ROOT / "src" / "saescope" / "assets" / "tiny" / "model"
TOKENIZER_FILES = ["vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json"]
SMALL = dict(vocab_size=4096, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
             max_position_embeddings=128, bos_token_id=0, eos_token_id=0, tie_word_embeddings=False)
KINDS = ("gpt2", "gpt_neox", "neox-sequential", "llama", "mistral", "qwen2", "gemma", "gemma2")


def _config(kind: str):
    import transformers as tf

    if kind == "gpt2":
        return tf.GPT2Config(vocab_size=4096, n_positions=128, n_embd=64, n_layer=3, n_head=4, bos_token_id=0,
                             eos_token_id=0, activation_function="gelu_new")
    if kind in ("gpt_neox", "neox-sequential"):
        return tf.GPTNeoXConfig(**SMALL, use_parallel_residual=kind == "gpt_neox", rotary_pct=0.25)
    if kind == "llama":
        return tf.LlamaConfig(**SMALL, num_key_value_heads=2)
    if kind == "mistral":
        return tf.MistralConfig(**SMALL, num_key_value_heads=2, sliding_window=None)
    if kind == "qwen2":
        return tf.Qwen2Config(**SMALL, num_key_value_heads=2, use_sliding_window=False)
    if kind == "gemma":
        return tf.GemmaConfig(**SMALL, num_key_value_heads=1, head_dim=16)
    if kind == "gemma2":
        return tf.Gemma2Config(**SMALL, num_key_value_heads=2, head_dim=16, sliding_window=64,
                               query_pre_attn_scalar=16)
    raise ValueError(f"unknown kind {kind!r}; one of {KINDS}")


def make(kind: str, out: Path, seed: int = 0) -> Path:
    """Build the random ``kind`` model and save it (safetensors) with the bundled tokenizer into ``out``."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(_config(kind))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or ".ln_" in name or name.startswith("transformer.ln_f"):
                p.add_(0.2 * torch.randn_like(p))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    for name in TOKENIZER_FILES:
        shutil.copy(TOKENIZER / name, out / name)
    return out
