"""Hostile files: pickles that would run code, remote code in model directories. The code must never run.

Every payload here would create a sentinel file if executed; the tests assert the file never appears, and
a control test proves the payloads are live (unpickling them without protection does create the file).
"""
from __future__ import annotations

import io
import json
import os
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from fuzz_util import hostile_pickle_bytes, write_dictionary_learning, write_openai_pt

SRC = Path(__file__).resolve().parents[1] / "src" / "saescope"

sae_mod = pytest.importorskip("saescope.sae")
from saescope.errors import SaescopeError  # noqa: E402


class _Payload:
    def __init__(self, sentinel):
        self.sentinel = str(sentinel)

    def __reduce__(self):
        return (os.system, (f"touch {self.sentinel}",))


def _raw_pickle(sentinel: Path) -> bytes:
    return pickle.dumps({"encoder.weight": _Payload(sentinel)})


def _legacy_torch(sentinel: Path) -> bytes:
    buf = io.BytesIO()
    torch.save({"encoder.weight": torch.zeros(2), "x": _Payload(sentinel)}, buf, _use_new_zipfile_serialization=False)
    return buf.getvalue()


def _zip_torch(sentinel: Path) -> bytes:
    return hostile_pickle_bytes(sentinel)


PAYLOADS = {"torch_zip": _zip_torch, "torch_legacy": _legacy_torch, "raw_pickle": _raw_pickle}


def test_payloads_are_live(tmp_path):
    """Control: without weights_only the payloads do run (so the tests below could fail)."""
    for name, make in PAYLOADS.items():
        sentinel = tmp_path / f"pwned-{name}"
        data = make(sentinel)
        if name == "raw_pickle":
            pickle.loads(data)
        else:
            torch.load(io.BytesIO(data), weights_only=False)
        assert sentinel.exists(), name


@pytest.mark.parametrize("kind", sorted(PAYLOADS))
def test_hostile_openai_pt_refused(tmp_path, kind):
    sentinel = tmp_path / "pwned"
    path = tmp_path / "sae.pt"
    path.write_bytes(PAYLOADS[kind](sentinel))
    with pytest.raises(SaescopeError) as info:
        sae_mod.SAE.load(path)
    assert not sentinel.exists()
    assert "\n" not in str(info.value)
    assert "sae.pt" in str(info.value), f"error should name the file: {info.value}"


@pytest.mark.parametrize("kind", sorted(PAYLOADS))
def test_hostile_dictionary_learning_refused(tmp_path, kind):
    sentinel = tmp_path / "pwned"
    d = write_dictionary_learning(tmp_path)
    (d / "ae.pt").write_bytes(PAYLOADS[kind](sentinel))
    with pytest.raises(SaescopeError):
        sae_mod.SAE.load(d)
    assert not sentinel.exists()


def test_hostile_npz_object_array_refused(tmp_path):
    """An npz member holding an object array is a pickle: np.load must run with allow_pickle=False."""
    sentinel = tmp_path / "pwned"
    d = tmp_path / "gs"
    d.mkdir()
    arr = np.empty(1, dtype=object)
    arr[0] = _Payload(sentinel)
    rng = np.random.default_rng(0)
    np.savez(d / "params.npz", W_enc=arr, W_dec=rng.standard_normal((32, 8), dtype=np.float32),
             b_enc=np.zeros(32, np.float32), b_dec=np.zeros(8, np.float32), threshold=np.zeros(32, np.float32))
    with pytest.raises(SaescopeError):
        sae_mod.SAE.load(d / "params.npz")
    assert not sentinel.exists()


def test_hostile_sparsity_or_extra_pickle_beside_native(tmp_path):
    """A native SAE directory with a hostile .pt dropped beside it: loading must not touch the pickle."""
    sentinel = tmp_path / "pwned"
    SAE, SAEConfig = sae_mod.SAE, sae_mod.SAEConfig
    sae = SAE(SAEConfig(architecture="relu", d_in=8, d_sae=16))
    out = tmp_path / "native"
    sae.save(out)
    (out / "sae_weights.pt").write_bytes(_zip_torch(sentinel))
    (out / "ae.pt").write_bytes(_zip_torch(sentinel))
    try:
        SAE.load(out)
    except SaescopeError:
        pass
    assert not sentinel.exists()


def test_valid_pt_still_loads(tmp_path):
    """The refusal is about pickled code, not .pt files: a plain OpenAI state dict loads."""
    sae = sae_mod.SAE.load(write_openai_pt(tmp_path))
    assert sae.d_in == 8 and sae.d_sae == 32


def test_convert_hostile_exits_2_one_line(tmp_path, capsys):
    """`saescope convert evil.pt out` (the real CLI, in-process): exit 2, one line, no payload, no output."""
    pytest.importorskip("saescope.cli.sae_cmds")
    from saescope.cli import main

    sentinel = tmp_path / "pwned"
    src = tmp_path / "evil.pt"
    src.write_bytes(_zip_torch(sentinel))
    dst = tmp_path / "out"
    code = main(["convert", str(src), str(dst)])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err and "evil.pt" in err, err
    assert not sentinel.exists()
    assert not dst.exists()


# --- trust_remote_code -----------------------------------------------------------------------------------------

def test_no_trust_remote_code_in_source():
    """Grep: trust_remote_code appears only as an explicit False (never True, never a variable)."""
    bad = []
    for path in SRC.rglob("*.py"):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            for m in re.finditer(r"trust_remote_code\s*[=:]\s*([^,)\s]+)", code):
                if m.group(1) != "False":
                    bad.append(f"{path.relative_to(SRC)}:{n}: {line.strip()}")
            if re.search(r"\*\*\s*\{[^}]*trust_remote_code", code):
                bad.append(f"{path.relative_to(SRC)}:{n}: {line.strip()}")
    assert not bad, "\n".join(bad)


EVIL_PY = """
import pathlib
pathlib.Path({sentinel!r}).write_text("remote code ran")
from transformers import PretrainedConfig
class EvilConfig(PretrainedConfig):
    model_type = "evilmodel"
"""


def _evil_model_dir(tmp_path: Path, gpt2_dir: Path, model_type: str) -> tuple[Path, Path]:
    sentinel = tmp_path / f"pwned-{model_type}"
    d = tmp_path / f"evil-{model_type}"
    shutil.copytree(gpt2_dir, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = model_type
    cfg["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilConfig",
                       "AutoTokenizer": ["evil.EvilConfig", None]}
    (d / "config.json").write_text(json.dumps(cfg))
    tok = json.loads((d / "tokenizer_config.json").read_text())
    tok["auto_map"] = {"AutoTokenizer": ["evil.EvilConfig", None]}
    (d / "tokenizer_config.json").write_text(json.dumps(tok))
    (d / "evil.py").write_text(EVIL_PY.format(sentinel=str(sentinel)))
    return d, sentinel


@pytest.mark.parametrize("model_type", ["evilmodel", "gpt2"])
def test_remote_code_model_dir_never_runs(tmp_path, gpt2_dir, model_type):
    """A local model directory with auto_map -> evil.py: loading either fails with a SaescopeError
    (unknown architecture) or loads the built-in class; evil.py never runs."""
    lm_mod = pytest.importorskip("saescope.lm")
    d, sentinel = _evil_model_dir(tmp_path, gpt2_dir, model_type)
    try:
        lm_mod.LanguageModel.from_pretrained(str(d))
    except SaescopeError as exc:
        assert "\n" not in str(exc)
    assert not sentinel.exists()
