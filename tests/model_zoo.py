"""Small random-weight Hugging Face models, one per supported model family: the single source for tests.

    from model_zoo import FAMILY_NAMES, build
    folder = build("gemma2", tmp_path)          # an HF directory: config.json, model.safetensors, tokenizer

Every model has d_model 64, 3 layers (unless overridden), vocabulary 4096 and the bundled tiny GPT-2 tokenizer, and
builds in well under a second. Norm weights (LayerNorm/RMSNorm gains and biases, q/k norms, Gemma's sandwich norms)
get random offsets so that a hook read before instead of after a norm shows up as a numeric difference.
Routers of mixture-of-experts blocks get random weights so that routing is not a tie.

``ZOO[name]`` says, besides the builder, which saescope family the model must load as (``family``), its
``config.model_type``, and the hub id TransformerLens 3.9 knows an architecture of this shape by (``tl3_name``;
None where TransformerLens 3.9 cannot load it from a small config).
"""
from __future__ import annotations

import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
TINY_TOKENIZER = ROOT / "src" / "saescope" / "assets" / "tiny" / "model"
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json")

VOCAB, D_MODEL, N_LAYERS = 4096, 64, 3
# Shared by the llama-like configs (field names of LlamaConfig and its relatives).
_LLAMA_LIKE = dict(vocab_size=VOCAB, hidden_size=D_MODEL, intermediate_size=128, num_attention_heads=4,
                   max_position_embeddings=128, bos_token_id=0, eos_token_id=0, tie_word_embeddings=False)


def save_tokenizer(dst: Path) -> None:
    """Copy the bundled tiny GPT-2 tokenizer (vocabulary 4096) into ``dst``."""
    for name in TOKENIZER_FILES:
        shutil.copy(TINY_TOKENIZER / name, Path(dst) / name)


def _gpt2(n_layers: int):
    import transformers as tf

    return tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=VOCAB, n_positions=128, n_ctx=128, n_embd=D_MODEL,
                                            n_layer=n_layers, n_head=4, activation_function="gelu_new",
                                            bos_token_id=0, eos_token_id=0))


def _neox(parallel: bool) -> Callable:
    def make(n_layers: int):
        import transformers as tf

        return tf.GPTNeoXForCausalLM(tf.GPTNeoXConfig(
            vocab_size=VOCAB, hidden_size=D_MODEL, num_hidden_layers=n_layers, num_attention_heads=4,
            intermediate_size=256, max_position_embeddings=128, rotary_pct=0.25, use_parallel_residual=parallel,
            bos_token_id=0, eos_token_id=0, tie_word_embeddings=False))

    return make


def _llama_like(model_cls: str, config_cls: str, **extra) -> Callable:
    def make(n_layers: int):
        import transformers as tf

        config = getattr(tf, config_cls)(**_LLAMA_LIKE, num_hidden_layers=n_layers, **extra)
        return getattr(tf, model_cls)(config)

    return make


def _alternating(n_layers: int, local: str, every: int, global_: str) -> list[str]:
    """Layer types with every ``every``-th layer (1-based) global, so a 3-layer model has both kinds."""
    return [global_ if (i + 1) % every == 0 else local for i in range(n_layers)]


def _gemma3_text_config(n_layers: int):
    import transformers as tf

    return tf.Gemma3TextConfig(**_LLAMA_LIKE, num_hidden_layers=n_layers, num_key_value_heads=2, head_dim=16,
                               query_pre_attn_scalar=16, sliding_window=4,   # shorter than the test texts
                               layer_types=_alternating(n_layers, "sliding_attention", 2, "full_attention"))


def _gemma3_text(n_layers: int):
    import transformers as tf

    return tf.Gemma3ForCausalLM(_gemma3_text_config(n_layers))


def _gemma3_multimodal(n_layers: int):
    """A Gemma-3 checkpoint as the 4B+ models are published: model_type gemma3, with a (tiny) vision tower."""
    import transformers as tf

    vision = tf.SiglipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                   num_attention_heads=2, image_size=28, patch_size=14)
    text = _gemma3_text_config(n_layers)
    return tf.Gemma3ForConditionalGeneration(tf.Gemma3Config(text_config=text.to_dict(), vision_config=vision.to_dict(),
                                                             mm_tokens_per_image=1, image_token_index=VOCAB - 1,
                                                             boi_token_index=VOCAB - 2, eoi_token_index=VOCAB - 3))


def _qwen3_5_text_kwargs(n_layers: int) -> dict:
    return dict(**_LLAMA_LIKE, num_hidden_layers=n_layers, num_key_value_heads=2, head_dim=16,
                linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=16, linear_value_head_dim=16,
                layer_types=_alternating(n_layers, "linear_attention", 2, "full_attention"))


def _qwen3_5_text(n_layers: int):
    import transformers as tf

    return tf.Qwen3_5ForCausalLM(tf.Qwen3_5TextConfig(**_qwen3_5_text_kwargs(n_layers)))


def _qwen3_5_multimodal(n_layers: int):
    """A Qwen3.5 checkpoint as published: model_type qwen3_5, with a (tiny) vision tower; loads text-only."""
    import transformers as tf

    vision = tf.Qwen3_5VisionConfig(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=D_MODEL,
                                    patch_size=14, num_position_embeddings=16)
    return tf.Qwen3_5ForConditionalGeneration(tf.Qwen3_5Config(
        text_config=_qwen3_5_text_kwargs(n_layers), vision_config=vision.to_dict(), image_token_id=VOCAB - 1,
        video_token_id=VOCAB - 2, vision_start_token_id=VOCAB - 3, vision_end_token_id=VOCAB - 4))


@dataclass(frozen=True)
class ZooModel:
    name: str                   # key in ZOO / FAMILY_NAMES
    model_type: str             # config.model_type of the saved directory
    family: str                 # saescope Family.name it must load as
    make: Callable              # n_layers -> an initialised *ForCausalLM (random weights)
    tl3_name: str | None = None  # TransformerLens 3.9 official name of this architecture, if it reads our config


_ENTRIES = [
    ZooModel("gpt2", "gpt2", "gpt2", _gpt2),   # against TransformerLens 3.9: tests/test_lm.py
    ZooModel("gpt_neox", "gpt_neox", "gpt_neox", _neox(True), "EleutherAI/pythia-31m"),
    ZooModel("gpt_neox_sequential", "gpt_neox", "gpt_neox", _neox(False), "EleutherAI/pythia-14m"),
    ZooModel("llama", "llama", "llama", _llama_like("LlamaForCausalLM", "LlamaConfig", num_key_value_heads=2)),
    ZooModel("mistral", "mistral", "llama", _llama_like("MistralForCausalLM", "MistralConfig", num_key_value_heads=2,
                                                        sliding_window=None), "mistralai/Mistral-7B-v0.1"),
    ZooModel("qwen2", "qwen2", "qwen", _llama_like("Qwen2ForCausalLM", "Qwen2Config", num_key_value_heads=2,
                                                    use_sliding_window=False), "Qwen/Qwen2-0.5B"),
    ZooModel("gemma", "gemma", "llama", _llama_like("GemmaForCausalLM", "GemmaConfig", num_key_value_heads=1,
                                                    head_dim=16)),
    ZooModel("gemma2", "gemma2", "gemma2", _llama_like("Gemma2ForCausalLM", "Gemma2Config", num_key_value_heads=2,
                                                       head_dim=16, sliding_window=4, query_pre_attn_scalar=16)),
    ZooModel("gemma3_text", "gemma3_text", "gemma3", _gemma3_text),
    ZooModel("gemma3", "gemma3", "gemma3", _gemma3_multimodal),
    ZooModel("qwen3", "qwen3", "qwen", _llama_like("Qwen3ForCausalLM", "Qwen3Config", num_key_value_heads=2,
                                                   head_dim=16), "Qwen/Qwen3-0.6B"),
    ZooModel("qwen3_5_text", "qwen3_5_text", "qwen3_5", _qwen3_5_text),
    ZooModel("qwen3_5", "qwen3_5", "qwen3_5", _qwen3_5_multimodal),
    ZooModel("qwen3_moe", "qwen3_moe", "qwen3_moe", _llama_like(
        "Qwen3MoeForCausalLM", "Qwen3MoeConfig", num_key_value_heads=2, head_dim=16, num_experts=4,
        num_experts_per_tok=2, moe_intermediate_size=32, norm_topk_prob=True)),
]
ZOO: dict[str, ZooModel] = {e.name: e for e in _ENTRIES}
FAMILY_NAMES: tuple[str, ...] = tuple(ZOO)


def _is_norm(param_name: str) -> bool:
    return any("norm" in part or part.startswith("ln") for part in param_name.split("."))


@torch.no_grad()
def build(family: str, out_dir, *, n_layers: int = N_LAYERS, seed: int | None = None,
          norm_noise: float = 0.2) -> Path:
    """Build the zoo model ``family`` (one of FAMILY_NAMES) with random weights and save it as an HF directory.

    ``seed`` defaults to a fixed per-family value; ``norm_noise`` is the std of the offsets added to every norm
    weight/bias. Returns ``out_dir``.
    """
    if family not in ZOO:
        raise KeyError(f"unknown zoo family {family!r}; known: {', '.join(FAMILY_NAMES)}")
    entry = ZOO[family]
    torch.manual_seed(zlib.crc32(family.encode()) % 10_000 if seed is None else seed)
    model = entry.make(n_layers)
    for name, p in model.named_parameters():
        if norm_noise and _is_norm(name):
            p.add_(norm_noise * torch.randn_like(p))
        elif name.endswith("mlp.gate.weight") and p.dim() == 2:   # MoE router: no ties between experts
            p.normal_(0.0, 0.5)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    save_tokenizer(out)
    return out


# The first zoo's names (kept so that older tests run unchanged): KINDS and make(kind, out, seed).
_OLD_NAMES = {"neox-sequential": "gpt_neox_sequential"}
KINDS = ("gpt2", "gpt_neox", "neox-sequential", "llama", "mistral", "qwen2", "gemma", "gemma2")


def make(kind: str, out, seed: int = 0) -> Path:
    """``build`` under the first zoo's names (``KINDS``); new tests use ``build`` and ``FAMILY_NAMES``."""
    return build(_OLD_NAMES.get(kind, kind), out, seed=seed)
