"""A GPT-2-small-shaped random model (12 layers, d_model 768, 12 heads; vocab 4,096 from the bundled tokenizer) as a
saescope ``LanguageModel`` and a TransformerLens ``HookedTransformer`` holding the very same unprocessed weights."""
from __future__ import annotations

import shutil
from pathlib import Path

import torch

TOKENIZER_FILES = ["vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json"]


def gpt2_small_pair(tmp: Path, seed: int = 0):
    """Save the model into ``tmp`` and load it with both libraries: returns ``(lm, tl)``."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions.gpt2 import convert_gpt2_weights
    from transformers import GPT2Config, GPT2LMHeadModel

    from saescope.assets import tiny_model_dir
    from saescope.lm import LanguageModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=4096, n_positions=1024, n_embd=768, n_layer=12, n_head=12, bos_token_id=0,
                     eos_token_id=0)
    GPT2LMHeadModel(cfg).save_pretrained(tmp)
    for name in TOKENIZER_FILES:
        shutil.copy(tiny_model_dir() / name, Path(tmp) / name)
    lm = LanguageModel.from_pretrained(str(tmp), device="cpu")
    tl_cfg = HookedTransformerConfig(n_layers=12, d_model=768, n_ctx=1024, d_head=64, n_heads=12, d_mlp=3072,
                                     d_vocab=4096, act_fn="gelu_new", normalization_type="LN", device="cpu")
    tl = HookedTransformer(tl_cfg, tokenizer=lm.tokenizer)
    tl.load_state_dict(convert_gpt2_weights(lm.hf_model, tl_cfg), strict=False)
    tl.eval()
    return lm, tl
