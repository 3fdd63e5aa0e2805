"""Loading: the one path rule (source / is_local), config-vs-weights checks, dtypes, quiet dependencies."""
from __future__ import annotations

import os
import shutil

import pytest
import torch

from saescope.errors import ModelLoadError, SaescopeError
from saescope.lm import LanguageModel

pytestmark = pytest.mark.usefixtures("one_thread")


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert isinstance(exc.value, SaescopeError) and "\n" not in msg and msg
    return msg


def test_every_spelling_of_a_directory_is_the_same_local_model(gpt2_dir, gpt2_hub, tmp_path, monkeypatch):
    shutil.copytree(gpt2_dir, tmp_path / "models" / "tiny")
    monkeypatch.chdir(tmp_path)
    spellings = ["models/tiny", "./models/tiny", "models/tiny/", "./models//tiny", str(tmp_path / "models" / "tiny"),
                 "models/../models/tiny"]
    monkeypatch.setenv("HOME", str(tmp_path))
    spellings.append("~/models/tiny")
    loaded = [LanguageModel.from_pretrained(s, device="cpu") for s in spellings]
    assert {(m.source, m.is_local, str(m.path)) for m in loaded} == {("local", True, str(tmp_path / "models" / "tiny"))}
    assert [m.name for m in loaded] == spellings            # the name stays as the user wrote it
    hub = LanguageModel.from_pretrained(gpt2_hub, device="cpu")
    assert (hub.source, hub.is_local) == ("hub", False)
    bundled = LanguageModel.from_pretrained("tiny", device="cpu")
    assert (bundled.source, bundled.is_local) == ("bundled", True)
    os.mkdir(tmp_path / "gpt2")                               # a directory shadows a hub id of the same name
    with pytest.raises(ModelLoadError) as e:
        LanguageModel.from_pretrained("gpt2", device="cpu")
    assert "config.json" in _one_line(e)


def _peak_rss_reset() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:       # resets VmHWM (peak RSS) of this process
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


@pytest.fixture(scope="module")
def small_gpt2(tmp_path_factory):
    import model_zoo

    return model_zoo.make("gpt2", tmp_path_factory.mktemp("small-gpt2"))


def _with_config(src, dst, safetensors: bool = True, **changes):
    import json

    shutil.copytree(src, dst)
    if not safetensors:
        from safetensors.torch import load_file

        torch.save(load_file(dst / "model.safetensors"), dst / "pytorch_model.bin")
        (dst / "model.safetensors").unlink()
    cfg = json.loads((dst / "config.json").read_text())
    cfg.update(changes)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


@pytest.mark.parametrize("field,value,safetensors", [
    ("n_layer", 100_000, True), ("n_layer", 4000, True), ("n_embd", 1_000_000, True), ("n_inner", 2_000_000, True),
    ("vocab_size", 10**9, True), ("vocab_size", 5_000_000, True), ("n_positions", 5_000_000, True),
    ("n_layer", 4000, False), ("n_embd", 100_000, False)])
def test_config_that_the_weights_cannot_back_is_refused_fast(small_gpt2, tmp_path, field, value, safetensors):
    import time

    folder = _with_config(small_gpt2, tmp_path / "bomb", safetensors, **{field: value})
    tracked = _peak_rss_reset()
    before = _peak_rss()
    t0 = time.perf_counter()
    with pytest.raises(ModelLoadError) as e:
        LanguageModel.from_pretrained(str(folder), device="cpu")
    seconds, grown = time.perf_counter() - t0, _peak_rss() - before
    msg = _one_line(e)
    assert "config.json" in msg and field in msg, msg
    assert seconds < 2.0, seconds
    if tracked:
        assert grown < 300 * 2**20, grown
    print(f"{field}={value} ({'safetensors' if safetensors else 'bin'}): refused in {seconds * 1e3:.0f} ms, "
          f"peak RSS +{grown / 2**20:.1f} MiB: {msg}")


def test_missing_weights_are_an_error_not_random_values(small_gpt2, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = _with_config(small_gpt2, tmp_path / "partial")
    sd = load_file(folder / "model.safetensors")
    del sd["transformer.h.1.mlp.c_fc.weight"]
    save_file(sd, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelLoadError) as e:
        LanguageModel.from_pretrained(str(folder), device="cpu")
    assert "transformer.h.1.mlp.c_fc.weight" in _one_line(e)
    with open(folder / "model.safetensors", "r+b") as f:          # a header length past the end of the file
        f.write((10**9).to_bytes(8, "little"))
    with pytest.raises(ModelLoadError) as e:
        LanguageModel.from_pretrained(str(folder), device="cpu")
    assert "model.safetensors" in _one_line(e)


@pytest.mark.parametrize("kind,dtype", [("gpt2", "bfloat16"), ("llama", "bfloat16"), ("gemma2", "float16")])
def test_half_precision_reads_and_generates_on_cpu(tmp_path, kind, dtype):
    import model_zoo

    folder = model_zoo.make(kind, tmp_path / kind)
    lm = LanguageModel.from_pretrained(str(folder), device="cpu", dtype=dtype)
    ref = LanguageModel.from_pretrained(str(folder), device="cpu")
    want = getattr(torch, dtype)
    assert lm.dtype == want and ref.dtype == torch.float32
    assert lm.info.final_norm_kind == ref.info.final_norm_kind and lm.info.final_norm_offset == ref.info.final_norm_offset
    text = "Sparse autoencoders find features"
    names = ["hook_embed", "blocks.1.hook_resid_pre", "blocks.1.ln2.hook_normalized", "blocks.1.attn.hook_z",
             "blocks.1.mlp.hook_post", "ln_final.hook_normalized"]
    acts, ref_acts = lm.run(text, capture=names, return_logits=True), ref.run(text, capture=names, return_logits=True)
    for name in names + ["logits"]:
        assert acts[name].dtype == want, name
        err = float((acts[name].float() - ref_acts[name]).abs().max() / ref_acts[name].abs().max())
        assert err < 5e-2, (name, err)
    seen = []
    vec = torch.randn(lm.info.d_model, generator=torch.Generator().manual_seed(0))

    def steer(act, *, ctx):
        seen.append(act.dtype)
        return act + vec.to(act.dtype)

    with lm.intervene({"blocks.1.hook_resid_post": steer, "blocks.0.ln1.hook_normalized": lambda a: a * 1.1}):
        out = lm.generate(text, max_new_tokens=5, do_sample=True, temperature=0.7, top_p=0.9, seed=0)
        greedy = lm.generate(text, max_new_tokens=5)
    assert out.shape == greedy.shape == (1, lm.to_tokens(text).shape[1] + 5)
    assert set(seen) == {want}


def test_dependency_chatter_is_silenced_locally(small_gpt2, tmp_path):
    """No 'Token indices sequence length' warning (saescope cuts contexts itself), no load report for an unexpected
    tensor; transformers' own logger levels are restored afterwards."""
    import logging

    from safetensors.torch import load_file, save_file

    from saescope.data.text import token_contexts

    class Records(logging.Handler):
        def __init__(self):
            super().__init__(logging.DEBUG)
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    folder = _with_config(small_gpt2, tmp_path / "extra")
    sd = load_file(folder / "model.safetensors")
    sd["transformer.h.0.attn.masked_bias"] = torch.zeros(1)          # an unexpected (ignored) tensor
    save_file(sd, folder / "model.safetensors", metadata={"format": "pt"})
    levels = {n: logging.getLogger(n).level for n in ("transformers.modeling_utils", "transformers.utils.loading_report")}
    seen, root = Records(), logging.getLogger("transformers")
    root_level = root.level
    root.setLevel(logging.WARNING)             # whatever verbosity an earlier test left transformers at
    root.addHandler(seen)
    try:
        lm = LanguageModel.from_pretrained(str(folder), device="cpu")
        long = "word " * (3 * lm.tokenizer.model_max_length)
        assert lm.to_tokens(long, truncate=True).shape[1] == lm.info.n_ctx
        assert next(iter(token_contexts(lm, [long], 32))).shape == (32,)
        text = "\n".join(seen.messages)
        assert "Token indices sequence length" not in text and "LOAD REPORT" not in text, text
        assert "not sharded" not in text and "masked_bias" not in text, text
        assert {n: logging.getLogger(n).level for n in levels} == levels
        lm.tokenizer(long)                                  # the tokenizer itself still warns when asked directly
        assert any("Token indices sequence length" in m for m in seen.messages)
    finally:
        root.removeHandler(seen)
        root.setLevel(root_level)
