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


# --- the hostile-input table: non-finite and overflowing numbers, compression bombs, size claims ---------------
import time  # noqa: E402

import fuzz_util as fu  # noqa: E402


def _edit_json(path: Path, edit) -> None:
    obj = json.loads(path.read_text())
    edit(obj)
    path.write_text(fu.dump_json_hostile(obj))


def _cfg_case(writer, edit):
    def build(tmp):
        target = writer(tmp)
        cfg = next(p for p in (fu.files_of(target) if target.is_dir() else [target, *target.parent.glob("*_cfg.json")])
                   if p.suffix == ".json")
        _edit_json(cfg, edit)
        return target
    return build


def _set(*path_and_value):
    *keys, value = path_and_value

    def edit(obj):
        for k in keys[:-1]:
            obj = obj[k]
        obj[keys[-1]] = value
    return edit


def _pt_case(writer, edit):
    def build(tmp):
        target = writer(tmp)
        pt = target if target.suffix == ".pt" else next(target.glob("*.pt"))
        sd = torch.load(pt, weights_only=True)
        edit(sd)
        torch.save(sd, pt)
        return target
    return build


def _st_case(writer, name, field_, value):
    def build(tmp):
        target = writer(tmp)
        st = next(p for p in fu.files_of(target) if p.suffix == ".safetensors")
        header, body = fu.read_safetensors(st)
        header[name][field_] = [value] + list(header[name][field_])[1:]
        fu.write_safetensors_raw(st, fu.dump_json_hostile(header).encode(), body)
        return target
    return build


INF, NAN = float("inf"), float("nan")
HOSTILE_TABLE = [
    # (id, builder(tmp) -> path for SAE.load, load kwargs, regex the one-line error must match)
    *[(f"saelens_d_sae={v!r}"[:40], _cfg_case(fu.write_saelens_v6, _set("d_sae", v)), {}, r"d_sae|not valid JSON")
      for v in (INF, -INF, NAN, 1e308, 2 ** 70, "HUGE_INT", "1e999", 4.5, -3)],
    ("saelens_k=inf", _cfg_case(fu.write_saelens_v6_topk, _set("k", INF)), {}, r"cfg.json: k"),
    ("saelens_k>d_sae", _cfg_case(fu.write_saelens_v6_topk, _set("k", 10 ** 9)), {}, r"cfg.json: k"),
    ("saelens_legacy_expansion=1e308", _cfg_case(fu.write_saelens_legacy, lambda o: (o.pop("d_sae"), o.update(expansion_factor=1e308))), {}, r"expansion_factor"),
    ("saelens_context_size=inf", _cfg_case(fu.write_saelens_v6, _set("metadata", "context_size", INF)), {}, r"context_size"),
    ("saelens_d_out=nan", _cfg_case(fu.write_saelens_skip_transcoder, _set("d_out", NAN)), {}, r"d_out"),
    ("saelens_widths=[inf]", _cfg_case(fu.write_saelens_matryoshka_training, _set("matryoshka_widths", [INF])), {}, r"matryoshka_widths"),
    ("saescope_input_scale=1e300", lambda tmp: _native_with(tmp, input_scale=1e300), {}, r"input_scale"),
    ("saescope_input_scale=nan", lambda tmp: _native_with(tmp, input_scale=NAN), {}, r"input_scale"),
    ("saescope_d_in=1e999", lambda tmp: _native_with(tmp, d_in="1e999"), {}, r"d_in"),
    ("safetensors_shape=[inf]", _st_case(fu.write_saelens_v6, "W_enc", "shape", INF), {}, r"shape|not valid JSON"),
    ("safetensors_shape=[1e999]", _st_case(fu.write_saelens_v6, "W_dec", "shape", "1e999"), {}, r"shape|not valid JSON"),
    ("safetensors_shape=[HUGE_INT]", _st_case(fu.write_saelens_v6, "W_dec", "shape", "HUGE_INT"), {}, r"not valid JSON"),
    ("safetensors_offsets=[nan]", _st_case(fu.write_saelens_v6, "b_enc", "data_offsets", NAN), {}, r"data_offsets"),
    ("safetensors_shape=[-1]", _st_case(fu.write_saelens_v6, "b_enc", "shape", -1), {}, r"shape"),
    ("sparsify_num_latents=inf", _cfg_case(fu.write_sparsify, _set("num_latents", INF)), {}, r"num_latents"),
    ("sparsify_k=nan", _cfg_case(fu.write_sparsify, _set("k", NAN)), {}, r"cfg.json: k"),
    ("sparsify_d_in=1e308", _cfg_case(fu.write_sparsify, _set("d_in", 1e308)), {}, r"d_in"),
    ("sparsify_expansion=HUGE", _cfg_case(fu.write_sparsify, lambda o: o.update(num_latents=0, expansion_factor="HUGE_INT")), {}, r"not valid JSON"),
    ("dl_trainer_k=inf_no_state_k", lambda tmp: _dl_k(tmp, INF), {}, r": k"),
    ("dl_state_k=2**40", _pt_case(fu.write_dictionary_learning_topk, lambda sd: sd.update(k=torch.tensor(2 ** 40))), {}, r": k"),
    ("dl_group_sizes_sum", _pt_case(fu.write_dictionary_learning_matryoshka, lambda sd: sd.update(group_sizes=torch.tensor([8, 2 ** 40]))), {}, r"group_sizes"),
    ("dl_trainer_k=nan_no_state_k", lambda tmp: _dl_k(tmp, NAN), {}, r": k"),
    ("openai_k=inf", _pt_case(fu.write_openai_pt, lambda sd: sd.update(activation_state_dict={"k": INF})), {}, r"activation_state_dict: k"),
    ("openai_k=2**70", _pt_case(fu.write_openai_pt, lambda sd: sd.update(activation_state_dict={"k": 2 ** 70})), {}, r"activation_state_dict: k"),
    ("attn_z_act_size=inf", _cfg_case(fu.write_attn_z, _set("act_size", INF)), {}, r"act_size"),
    ("attn_z_dict_size=1e308", _cfg_case(fu.write_attn_z, _set("dict_size", 1e308)), {}, r"dict_size"),
    # bombs and size claims (smaller than benchmarks/hostile_bombs.py's 1 GiB, same ratios)
    ("npz_deflate_bomb", lambda tmp: fu.npz_compression_bomb(tmp / "params.npz", 2 ** 27), {}, r"compression bomb"),
    ("npz_zip_size_lie", lambda tmp: fu.npz_size_lie(tmp / "params.npz"), {}, r"compression bomb"),
    ("pt_deflate_bomb", lambda tmp: fu.pt_compression_bomb(tmp / "ae.pt", 2 ** 27), {"architecture": "relu"}, r"compression bomb"),
    ("pt_storage_claim", lambda tmp: fu.pt_storage_claim(tmp / "ae.pt"), {"architecture": "relu"}, r"storage '0' declares"),
    ("pt_view_past_storage", lambda tmp: fu.pt_tensor_past_storage(tmp / "ae.pt"), {"architecture": "relu"}, r"past its storage"),
    ("pt_legacy_claim", lambda tmp: fu.pt_legacy_claim(tmp / "ae.pt"), {"architecture": "relu"}, r"corrupt or truncated"),
    ("safetensors_shape_claim", fu.safetensors_shape_claim, {}, r"lies outside the file"),
    ("cfg_width_vs_weights", fu.cfg_width_claim, {}, r"expected \[8, 16777216\] from the config"),
]


def _native_with(tmp, **fields):
    sae = sae_mod.SAE(sae_mod.SAEConfig("relu", d_in=8, d_sae=16))
    sae.save(tmp / "n")
    _edit_json(tmp / "n" / "cfg.json", lambda o: o["saescope"].update(fields))
    return tmp / "n"


def _dl_k(tmp, value):
    d = fu.write_dictionary_learning_topk(tmp)
    sd = torch.load(d / "ae.pt", weights_only=True)
    del sd["k"]
    torch.save(sd, d / "ae.pt")
    _edit_json(d / "config.json", _set("trainer", "k", value))
    return d


@pytest.mark.parametrize("name,build,kwargs,expect", HOSTILE_TABLE, ids=[row[0] for row in HOSTILE_TABLE])
def test_hostile_table(tmp_path, name, build, kwargs, expect):
    """Each hostile file is refused with one line naming the problem, in under 2 s, without a memory spike."""
    target = build(tmp_path)
    rss0 = fu.max_rss_mb()
    t0 = time.perf_counter()
    with fu.address_space_limit(2048), fu.time_limit(10), pytest.raises(SaescopeError) as info:
        sae_mod.SAE.load(target, **kwargs)
    elapsed = time.perf_counter() - t0
    msg = str(info.value)
    assert "\n" not in msg and re.search(expect, msg), msg
    assert elapsed < 2.0, f"{elapsed:.2f} s"
    assert fu.max_rss_mb() - rss0 < 100


def test_hostile_table_size():
    assert len(HOSTILE_TABLE) >= 40
