"""Numerics: half-precision options never silently produce NaN/inf, and a model or SAE that outputs NaN/inf
during read, steer or eval is reported as one clear line (exit 2), not printed as numbers.

The poisoned SAE has finite weights (so it loads) whose decoder overflows float32 at run time; the poisoned
model is the gpt2 fixture with one MLP weight set to NaN.
"""
from __future__ import annotations

import contextlib
import io
import json
import re
import shutil

import pytest
import torch

from saescope.cli import main
from saescope.errors import SaescopeError

HOOK = "blocks.6.hook_resid_pre"


@pytest.fixture(scope="module")
def num_ws(tmp_path_factory, gpt2_dir):
    sae_mod = pytest.importorskip("saescope.sae")
    from safetensors.torch import load_file, save_file

    SAE, SAEConfig, SAEMetadata = sae_mod.SAE, sae_mod.SAEConfig, sae_mod.SAEMetadata
    root = tmp_path_factory.mktemp("numerics")
    meta = SAEMetadata(model_name="gpt2", hook_name=HOOK)
    good = SAE(SAEConfig(architecture="relu", d_in=64, d_sae=128, metadata=meta), seed=0)
    with torch.no_grad():
        good.b_enc.fill_(0.05)  # some features fire on every token
    good.save(root / "sae_good")
    bad = SAE(SAEConfig(architecture="relu", d_in=64, d_sae=128, metadata=meta), seed=0)
    with torch.no_grad():  # finite weights whose encoder (and decoder) overflow float32 to inf at run time
        bad.b_enc.fill_(3.35e38)         # near float32's max (3.40e38): feature j reads +-1e38 * x_(j % 64),
        eye = torch.eye(64) * 1e38        # so on every token the sign-matching half overflows to inf
        bad.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        bad.W_dec.fill_(3e37)
    bad.save(root / "sae_overflow")
    model = root / "model_nan"
    shutil.copytree(gpt2_dir, model)
    w = load_file(str(model / "model.safetensors"))
    key = next(k for k in w if k.endswith("h.2.mlp.c_fc.weight"))
    w[key] = torch.full_like(w[key], float("nan"))
    save_file(w, str(model / "model.safetensors"), metadata={"format": "pt"})
    big = root / "model_big"   # embeddings x1e7: the residual stream exceeds float16's range (65504)
    shutil.copytree(gpt2_dir, big)
    w = load_file(str(big / "model.safetensors"))
    key = next(k for k in w if k.endswith("wte.weight"))
    w[key] = w[key] * 1e7
    save_file(w, str(big / "model.safetensors"), metadata={"format": "pt"})
    return {"root": root, "model": str(gpt2_dir), "model_nan": str(model), "model_big": str(big)}


def _cli(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
    lines = [ln for ln in err.getvalue().splitlines() if ln.strip() and "Loading weights" not in ln]
    return code, out.getvalue(), lines


def _assert_reported(code, out, lines):
    assert code == 2, (code, out[:300], lines)
    assert len(lines) == 1 and re.search(r"nan|inf|finite|overflow", lines[0], re.I), lines
    assert not re.search(r"\bnan\b|\binf\b", out, re.I), f"non-finite numbers printed: {out[:300]}"


TEXT = "The cat sat on the mat"


def _cases(w):
    sae_bad = ["--model", w["model"], "--sae", str(w["root"] / "sae_overflow")]
    model_bad = ["--model", w["model_nan"], "--sae", str(w["root"] / "sae_good")]
    corpus = w["root"] / "corpus.txt"
    if not corpus.exists():
        corpus.write_text("\n".join(f"line {i}: the quick brown fox jumps over the lazy dog" for i in range(20)))
    return {
        "read-sae-overflow": ["read", TEXT, *sae_bad, "--json"],
        "read-model-nan": ["read", TEXT, *model_bad, "--json"],
        "steer-clamp-sae-overflow": ["steer", TEXT, *sae_bad, "--feature", "1", "--strength", "2", "--method", "clamp",
                                     "--max-new-tokens", "3", "--temperature", "0", "--json"],
        "steer-model-nan": ["steer", TEXT, *model_bad, "--feature", "1", "--strength", "2", "--max-new-tokens", "3",
                            "--temperature", "0", "--json"],
        "eval-sae-overflow": ["eval", *sae_bad, "--dataset", str(corpus), "--tokens", "32", "--context-size", "16", "--json"],
        "eval-model-nan": ["eval", *model_bad, "--dataset", str(corpus), "--tokens", "32", "--context-size", "16", "--json"],
    }


CASE_IDS = ["read-sae-overflow", "read-model-nan", "steer-clamp-sae-overflow", "steer-model-nan", "eval-sae-overflow",
            "eval-model-nan"]
XFAIL: dict[str, str] = {}  # case id -> finding (13 was fixed by the interp owner)


@pytest.mark.parametrize("case", [pytest.param(c, marks=[pytest.mark.xfail(strict=True, reason=XFAIL[c])] if c in XFAIL else [])
                                  for c in CASE_IDS])
def test_nonfinite_is_reported(num_ws, case):
    code, out, lines = _cli(_cases(num_ws)[case])
    _assert_reported(code, out, lines)


def test_good_sae_reads_finite(num_ws):
    """Control: the same command with the good SAE and model succeeds with finite numbers."""
    code, out, lines = _cli(["read", TEXT, "--model", num_ws["model"], "--sae", str(num_ws["root"] / "sae_good"), "--json"])
    assert code in (0, None), lines
    acts = [f["activation"] for t in json.loads(out)["tokens"] for f in t["features"]]
    assert acts and all(abs(a) < 1e30 for a in acts)


def test_fp16_load_of_weights_beyond_fp16_range_is_refused(num_ws, tmp_path):
    """SAE.load(dtype=float16) of a float32 SAE with weights > 65504: an error, not a silent inf."""
    from saescope.sae import SAE, SAEConfig

    sae = SAE(SAEConfig(architecture="relu", d_in=8, d_sae=16), seed=0)
    with torch.no_grad():
        sae.W_dec[0, 0] = 1e6
    sae.save(tmp_path / "big")
    try:
        loaded = SAE.load(tmp_path / "big", dtype=torch.float16)
    except SaescopeError as exc:
        assert "\n" not in str(exc)
        return
    assert all(torch.isfinite(p).all() for p in loaded.parameters()), "float16 cast produced inf silently"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_read_is_finite_and_close(num_ws, dtype):
    """The model and SAE in float16/bfloat16: features finite and the top feature per token mostly agrees with
    float32 (ties aside)."""
    from saescope.interp import read_features
    from saescope.lm import LanguageModel
    from saescope.sae import SAE

    path = num_ws["root"] / "sae_good"
    ref = read_features(LanguageModel.from_pretrained(num_ws["model"]), SAE.load(path), TEXT, top_k=1)[0]
    try:
        lm = LanguageModel.from_pretrained(num_ws["model"], dtype=dtype)
    except SaescopeError as exc:  # a clear refusal of half precision on CPU is acceptable
        pytest.skip(f"half precision refused: {exc}")
    half = read_features(lm, SAE.load(path, dtype=dtype), TEXT, top_k=1)[0]
    r, h = ref.to_dict()["tokens"], half.to_dict()["tokens"]
    assert len(r) == len(h)
    agree = 0
    for a, b in zip(r, h):
        for f in b["features"]:
            assert torch.isfinite(torch.tensor(f["activation"])), b
        if a["features"] and b["features"] and a["features"][0]["index"] == b["features"][0]["index"]:
            agree += 1
    assert agree >= len(r) // 2, (agree, len(r))


def test_harvest_float16_overflow_is_not_silent(num_ws, tmp_path):
    """`saescope harvest --dtype float16` of activations beyond float16's range: a one-line error (exit 2), not
    a cache full of inf that training later skips row by row."""
    import numpy as np

    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(f"line {i}: the quick brown fox jumps over the lazy dog" for i in range(30)))
    out = tmp_path / "cache"
    code, _, lines = _cli(["harvest", "--model", num_ws["model_big"], "--hook", "blocks.0.hook_resid_pre", "--dataset",
                           str(corpus), "--tokens", "128", "--context-size", "16", "--dtype", "float16", "--out", str(out)])
    stored = [np.load(p) for p in sorted(out.glob("*.npy"))] if out.exists() else []
    assert all(np.isfinite(a).all() for a in stored), "non-finite float16 activations were written"
    assert code == 2 and len(lines) == 1 and re.search(r"float16|overflow|inf", lines[0], re.I), (code, lines)
