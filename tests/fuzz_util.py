"""Helpers for the reliability tests: valid files in every foreign SAE format, seeded corruptions of them,
per-case time limits and memory high-water marks.

The valid files are written here from the published layouts (not with saescope), so a reader that only
understands its own output would fail the "valid seed loads" check.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import random
import resource
import signal
import struct
import zipfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

D_IN, D_SAE = 8, 32


class Timeout(Exception):
    """Raised inside a case that ran past its time limit (SIGALRM)."""


@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise Timeout in the main thread after ``seconds`` (pure-Python loops are interrupted)."""

    def on_alarm(signum, frame):
        raise Timeout(f"case took longer than {seconds}s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def max_rss_mb() -> float:
    """Peak resident set size of this process so far, in MB (Linux reports KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _weights(seed: int, d_in=D_IN, d_sae=D_SAE):
    g = torch.Generator().manual_seed(seed)
    return {
        "W_enc": torch.randn(d_in, d_sae, generator=g) * 0.3,
        "W_dec": torch.randn(d_sae, d_in, generator=g) * 0.3,
        "b_enc": torch.randn(d_sae, generator=g) * 0.1,
        "b_dec": torch.randn(d_in, generator=g) * 0.1,
    }


def _json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj))


# --- one writer per format: returns the path to pass to SAE.load -------------------------------------------------

def write_saelens_v6(root: Path, seed: int = 0) -> Path:
    d = root / "saelens_v6"
    d.mkdir(parents=True)
    w = _weights(seed)
    _json(d / "cfg.json", {
        "architecture": "standard", "d_in": D_IN, "d_sae": D_SAE, "dtype": "float32", "device": "cpu",
        "apply_b_dec_to_input": True, "normalize_activations": "none", "reshape_activations": "none",
        "metadata": {"sae_lens_version": "6.5.0", "model_name": "gpt2", "hook_name": "blocks.1.hook_resid_pre",
                     "hook_head_index": None, "prepend_bos": True, "context_size": 128, "dataset_path": "x",
                     "neuronpedia_id": None},
    })
    save_file(w, str(d / "sae_weights.safetensors"))
    return d


def write_saelens_v6_topk(root: Path, seed: int = 0) -> Path:
    d = root / "saelens_v6_topk"
    d.mkdir(parents=True)
    w = _weights(seed)
    _json(d / "cfg.json", {
        "architecture": "topk", "d_in": D_IN, "d_sae": D_SAE, "k": 4, "dtype": "float32", "device": "cpu",
        "apply_b_dec_to_input": False, "normalize_activations": "none", "reshape_activations": "none",
        "metadata": {"sae_lens_version": "6.5.0", "model_name": "gpt2", "hook_name": "blocks.1.hook_resid_pre"},
    })
    save_file(w, str(d / "sae_weights.safetensors"))
    save_file({"sparsity": torch.full((D_SAE,), -2.0)}, str(d / "sparsity.safetensors"))
    return d


def write_saelens_legacy(root: Path, seed: int = 0) -> Path:
    d = root / "saelens_legacy"
    d.mkdir(parents=True)
    w = _weights(seed)
    _json(d / "cfg.json", {
        "model_name": "gpt2-small", "hook_point": "blocks.1.hook_resid_pre", "hook_point_layer": 1,
        "hook_point_head_index": None, "d_in": D_IN, "d_sae": D_SAE, "dtype": "torch.float32", "device": "cpu",
        "activation_fn_str": "relu", "apply_b_dec_to_input": True, "finetuning_scaling_factor": False,
        "context_size": 128, "dataset_path": "Skylion007/openwebtext", "prepend_bos": True,
        "normalize_activations": False, "sae_lens_training_version": None,
    })
    save_file(w, str(d / "sae_weights.safetensors"))
    return d


def write_openai_pt(root: Path, seed: int = 0) -> Path:
    """OpenAI sparse_autoencoder state dict (TopK): pre_bias, encoder.weight [d_sae, d_in], latent_bias,
    decoder.weight [d_in, d_sae], stats_last_nonzero, activation + activation_state_dict."""
    root.mkdir(parents=True, exist_ok=True)
    w = _weights(seed)
    sd = {
        "pre_bias": w["b_dec"], "latent_bias": w["b_enc"],
        "encoder.weight": w["W_enc"].T.contiguous(), "decoder.weight": w["W_dec"].T.contiguous(),
        "stats_last_nonzero": torch.zeros(D_SAE, dtype=torch.long),
        "activation": "TopK", "activation_state_dict": {"k": 4},
    }
    path = root / "openai_topk.pt"
    torch.save(sd, path)
    return path


def write_sparsify(root: Path, seed: int = 0) -> Path:
    """EleutherAI sparsify: cfg.json + sae.safetensors (encoder.weight [d_sae, d_in], encoder.bias, W_dec
    [d_sae, d_in], b_dec)."""
    d = root / "sparsify" / "layers.1"
    d.mkdir(parents=True)
    w = _weights(seed)
    _json(d / "cfg.json", {"expansion_factor": D_SAE // D_IN, "normalize_decoder": True, "num_latents": D_SAE,
                           "k": 4, "multi_topk": False, "skip_connection": False, "d_in": D_IN})
    save_file({"encoder.weight": w["W_enc"].T.contiguous(), "encoder.bias": w["b_enc"],
               "W_dec": w["W_dec"], "b_dec": w["b_dec"]}, str(d / "sae.safetensors"))
    return d


def write_dictionary_learning(root: Path, seed: int = 0) -> Path:
    """dictionary_learning AutoEncoder: ae.pt (bias, encoder.weight, encoder.bias, decoder.weight) + config.json."""
    d = root / "dictionary_learning" / "resid_post_layer_1" / "trainer_0"
    d.mkdir(parents=True)
    w = _weights(seed)
    torch.save({"bias": w["b_dec"], "encoder.weight": w["W_enc"].T.contiguous(), "encoder.bias": w["b_enc"],
                "decoder.weight": w["W_dec"].T.contiguous()}, d / "ae.pt")
    _json(d / "config.json", {
        "trainer": {"dict_class": "AutoEncoder", "trainer_class": "StandardTrainer", "activation_dim": D_IN,
                    "dict_size": D_SAE, "lr": 1e-3, "l1_penalty": 0.1, "layer": 1, "lm_name": "openai-community/gpt2",
                    "submodule_name": "resid_post_layer_1", "seed": 0},
        "buffer": {"d_submodule": D_IN, "io": "out", "n_ctxs": 100, "ctx_len": 128, "refresh_batch_size": 8,
                   "out_batch_size": 64, "device": "cpu"},
    })
    return d


def write_gemmascope(root: Path, seed: int = 0) -> Path:
    """Gemma Scope params.npz: W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_enc, b_dec, threshold."""
    d = root / "gemmascope" / "layer_1" / "width_32" / "average_l0_5"
    d.mkdir(parents=True)
    w = {k: v.numpy() for k, v in _weights(seed).items()}
    w["threshold"] = np.full((D_SAE,), 0.05, dtype=np.float32)
    np.savez(d / "params.npz", **w)
    return d / "params.npz"


def write_saelens_skip_transcoder(root: Path, seed: int = 0) -> Path:
    """SAELens v6 skip transcoder (as SAELens 6.54 saves one): W_dec [d_sae, d_out], W_skip [d_out, d_in]."""
    d = root / "saelens_skip_transcoder"
    d.mkdir(parents=True)
    w = _weights(seed)
    d_out = D_IN - 2
    w["W_dec"], w["b_dec"] = w["W_dec"][:, :d_out].contiguous(), w["b_dec"][:d_out].contiguous()
    w["W_skip"] = torch.randn(d_out, D_IN, generator=torch.Generator().manual_seed(seed + 1)) * 0.1
    _json(d / "cfg.json", {
        "architecture": "skip_transcoder", "d_in": D_IN, "d_sae": D_SAE, "d_out": d_out, "dtype": "float32",
        "device": "cpu", "apply_b_dec_to_input": False, "normalize_activations": "none", "reshape_activations": "none",
        "metadata": {"sae_lens_version": "6.54.12", "model_name": "gpt2", "hook_name": "blocks.1.ln2.hook_normalized",
                     "hook_name_out": "blocks.1.hook_mlp_out"},
    })
    save_file(w, str(d / "sae_weights.safetensors"))
    return d


def write_saelens_matryoshka_training(root: Path, seed: int = 0) -> Path:
    """A SAELens Matryoshka BatchTopK *training* checkpoint: scalar float64 topk_threshold, widths in cfg."""
    d = root / "saelens_matryoshka"
    d.mkdir(parents=True)
    w = _weights(seed)
    w["topk_threshold"] = torch.tensor(0.1, dtype=torch.float64)
    _json(d / "cfg.json", {
        "architecture": "matryoshka_batchtopk", "d_in": D_IN, "d_sae": D_SAE, "k": 4, "dtype": "float32",
        "device": "cpu", "apply_b_dec_to_input": True, "normalize_activations": "none", "reshape_activations": "none",
        "rescale_acts_by_decoder_norm": True, "matryoshka_widths": [8, 16, D_SAE],
        "metadata": {"sae_lens_version": "6.54.12", "hook_name": "blocks.1.hook_resid_post"},
    })
    save_file(w, str(d / "sae_weights.safetensors"))
    return d


def write_sparsify_skip_transcoder(root: Path, seed: int = 0) -> Path:
    d = root / "sparsify_tc" / "layers.1.mlp"
    d.mkdir(parents=True)
    w = _weights(seed)
    _json(d / "cfg.json", {"activation": "topk", "expansion_factor": 4, "normalize_decoder": True, "num_latents": D_SAE,
                           "k": 4, "multi_topk": False, "skip_connection": True, "transcode": True, "d_in": D_IN})
    save_file({"encoder.weight": w["W_enc"].T.contiguous(), "encoder.bias": w["b_enc"], "W_dec": w["W_dec"],
               "b_dec": w["b_dec"], "W_skip": torch.eye(D_IN) * 0.5}, str(d / "sae.safetensors"))
    return d


def _dl_config(d: Path, cls: str, **trainer) -> None:
    _json(d / "config.json", {"trainer": {"dict_class": cls, "activation_dim": D_IN, "dict_size": D_SAE, "layer": 1,
                                          "lm_name": "EleutherAI/pythia-70m-deduped",
                                          "submodule_name": "resid_post_layer_1", **trainer},
                              "buffer": {"d_submodule": D_IN, "io": "out", "ctx_len": 128}})


def write_dictionary_learning_topk(root: Path, seed: int = 0) -> Path:
    """AutoEncoderTopK (k and threshold buffers) with its config.json."""
    d = root / "dl_topk" / "trainer_0"
    d.mkdir(parents=True)
    w = _weights(seed)
    torch.save({"encoder.weight": w["W_enc"].T.contiguous(), "encoder.bias": w["b_enc"],
                "decoder.weight": w["W_dec"].T.contiguous(), "b_dec": w["b_dec"], "k": torch.tensor(4, dtype=torch.int),
                "threshold": torch.tensor(0.2)}, d / "ae.pt")
    _dl_config(d, "AutoEncoderTopK", k=4)
    return d


def write_dictionary_learning_matryoshka(root: Path, seed: int = 0) -> Path:
    d = root / "dl_matryoshka" / "trainer_0"
    d.mkdir(parents=True)
    w = _weights(seed)
    torch.save({**w, "k": torch.tensor(4, dtype=torch.int), "threshold": torch.tensor(0.2),
                "group_sizes": torch.tensor([8, 8, D_SAE - 16])}, d / "ae.pt")
    _dl_config(d, "MatryoshkaBatchTopKSAE", k=4)
    return d


def write_attn_z(root: Path, seed: int = 0) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    torch.save(_weights(seed), root / "gpt2-small_L5_Hcat_z_lr1.20e-03_l11.00e+00_ds24576.pt")
    _json(root / "gpt2-small_L5_Hcat_z_lr1.20e-03_l11.00e+00_ds24576_cfg.json",
          {"act_size": D_IN, "dict_size": D_SAE, "act_name": "blocks.5.attn.hook_z", "model_name": "gpt2-small",
           "seed": 49, "l1_coeff": 1.0})
    return root / "gpt2-small_L5_Hcat_z_lr1.20e-03_l11.00e+00_ds24576.pt"


FORMATS = {
    "saelens_v6": write_saelens_v6,
    "saelens_skip_transcoder": write_saelens_skip_transcoder,
    "saelens_matryoshka_training": write_saelens_matryoshka_training,
    "sparsify_skip_transcoder": write_sparsify_skip_transcoder,
    "dictionary_learning_topk": write_dictionary_learning_topk,
    "dictionary_learning_matryoshka": write_dictionary_learning_matryoshka,
    "attn_z": write_attn_z,
    "saelens_v6_topk": write_saelens_v6_topk,
    "saelens_legacy": write_saelens_legacy,
    "openai_pt": write_openai_pt,
    "sparsify": write_sparsify,
    "dictionary_learning": write_dictionary_learning,
    "gemmascope_npz": write_gemmascope,
}


# --- corruptions --------------------------------------------------------------------------------------------------

def files_of(target: Path) -> list[Path]:
    return sorted(p for p in target.rglob("*") if p.is_file()) if target.is_dir() else [target]


def truncate(path: Path, rng: random.Random) -> str:
    data = path.read_bytes()
    n = rng.randrange(0, max(1, len(data)))
    path.write_bytes(data[:n])
    return f"truncate {path.name} to {n}/{len(data)}"


def bit_flips(path: Path, rng: random.Random) -> str:
    data = bytearray(path.read_bytes())
    if not data:
        return "empty"
    n = rng.choice([1, 1, 2, 4, 16])
    for _ in range(n):
        i = rng.randrange(len(data))
        data[i] ^= 1 << rng.randrange(8)
    path.write_bytes(bytes(data))
    return f"{n} bit flips in {path.name}"


def overwrite_region(path: Path, rng: random.Random) -> str:
    data = bytearray(path.read_bytes())
    if not data:
        return "empty"
    i = rng.randrange(len(data))
    n = rng.randrange(1, 64)
    data[i:i + n] = bytes(rng.randrange(256) for _ in range(n))
    path.write_bytes(bytes(data))
    return f"random bytes at {i} in {path.name}"


def empty_file(path: Path, rng: random.Random) -> str:
    path.write_bytes(b"")
    return f"empty {path.name}"


def random_file(path: Path, rng: random.Random) -> str:
    path.write_bytes(rng.randbytes(rng.choice([7, 100, 4096])))
    return f"random bytes as {path.name}"


def delete_file(path: Path, rng: random.Random) -> str:
    path.unlink()
    return f"delete {path.name}"


BYTE_MUTATORS = [truncate, bit_flips, bit_flips, overwrite_region, empty_file, random_file, delete_file]


def read_safetensors(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def write_safetensors_raw(path: Path, header: dict | bytes, body: bytes, length: int | None = None) -> None:
    hb = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(hb) if length is None else length) + hb + body)


def mutate_safetensors_header(path: Path, rng: random.Random) -> str:
    """Structure-aware corruption of a safetensors header (the file stays syntactically a safetensors file)."""
    header, body = read_safetensors(path)
    names = [k for k in header if k != "__metadata__"]
    name = rng.choice(names)
    kind = rng.randrange(12)
    if kind == 0:
        header[name]["shape"] = [2 ** 40, 2 ** 20]
        what = "huge shape [2**40, 2**20]"
    elif kind == 1:  # huge shape with matching (lying) offsets: the file is far too small for it
        header[name]["shape"] = [2 ** 20, 2 ** 20]
        header[name]["data_offsets"] = [0, 4 * 2 ** 40]
        what = "huge shape with matching offsets"
    elif kind == 2:
        header[name]["data_offsets"] = [0, len(body) + rng.randrange(1, 10 ** 9)]
        what = "offsets past end of file"
    elif kind == 3:
        header[name]["dtype"] = rng.choice(["I8", "BOOL", "F64", "I64", "U8", "F8_E4M3", "C64", "XYZ"])
        what = f"dtype {header[name]['dtype']} without resizing"
    elif kind == 4:
        header[name]["shape"] = [-1, 5]
        what = "negative shape"
    elif kind == 5:
        del header[name]
        what = f"drop {name}"
    elif kind == 6:
        # a consistent file whose tensors are the wrong dtype (int8 or float64), sizes recomputed
        from safetensors.torch import load_file
        tensors = load_file(str(path))
        dt = rng.choice([torch.int8, torch.float64, torch.int64, torch.bool, torch.complex64])
        tensors = {k: (v.to(dt) if dt is not torch.bool else v > 0) for k, v in tensors.items()}
        save_file(tensors, str(path))
        return f"every tensor cast to {dt}"
    elif kind == 7:
        from safetensors.torch import load_file
        tensors = load_file(str(path))
        t = tensors[name]
        tensors[name] = torch.zeros(*(s + rng.randrange(1, 3) for s in t.shape)) if t.ndim else torch.zeros(3)
        save_file(tensors, str(path))
        return f"{name} wrong shape"
    elif kind == 8:
        write_safetensors_raw(path, json.dumps(header).encode(), body, length=2 ** 62)
        return "header length 2**62"
    elif kind == 9:
        write_safetensors_raw(path, b"[1, 2, 3]", body)
        return "header is a JSON list"
    elif kind == 10:
        write_safetensors_raw(path, b"{\"a\": " * 5000 + b"1" + b"}" * 5000, body)
        return "deeply nested header"
    else:
        from safetensors.torch import load_file
        tensors = load_file(str(path))
        tensors[name] = torch.full_like(tensors[name], float(rng.choice(["nan", "inf", "-inf"])))
        save_file(tensors, str(path))
        return f"{name} non-finite"
    write_safetensors_raw(path, header, body)
    return what


WRONG_VALUES = [None, "x", "", -1, 0, 2 ** 63, 10 ** 12, 1.5, float("nan"), [], [1, 2], {}, {"a": 1}, True]


def mutate_json(path: Path, rng: random.Random) -> str:
    """Wrong types, missing keys, huge sizes, or malformed JSON in a config file."""
    try:
        obj = json.loads(path.read_text())
    except Exception:
        return truncate(path, rng)
    kind = rng.randrange(6)
    if kind == 5 or not isinstance(obj, dict) or not obj:
        choice = rng.choice(["[]", "null", "42", "\"cfg\"", "{", "{\"d_in\": }", "\x00\xff", "[" * 100000])
        path.write_text(choice)
        return f"replace JSON with {choice[:12]!r}"
    # pick a key, possibly a nested one
    container, key = obj, rng.choice(list(obj))
    if isinstance(container[key], dict) and container[key] and rng.random() < 0.5:
        container = container[key]
        key = rng.choice(list(container))
    if kind == 0:
        del container[key]
        what = f"drop {key}"
    elif kind in (1, 2):
        container[key] = rng.choice(WRONG_VALUES)
        what = f"{key}={container[key]!r}"
    elif kind == 3:
        for k in ("d_sae", "num_latents", "dict_size", "d_in", "activation_dim", "k"):
            if k in container:
                container[k] = rng.choice([2 ** 40, 2 ** 31, -5, 0])
                key = k
        what = f"size {key}={container.get(key)!r}"
    else:
        container[key] = {"nested": [container.get(key)] * 3}
        what = f"{key} nested"
    path.write_text(json.dumps(obj, allow_nan=True))
    return what


def mutate_torch_pickle(path: Path, rng: random.Random) -> str:
    """Structure-aware corruption of a torch.save state dict: wrong types, dtypes, shapes, top-level objects."""
    sd = torch.load(path, weights_only=True)
    tensors = [k for k, v in sd.items() if isinstance(v, torch.Tensor)]
    name = rng.choice(tensors)
    kind = rng.randrange(7)
    if kind == 0:
        sd[name] = "not a tensor"
    elif kind == 1:
        sd[name] = sd[name].to(rng.choice([torch.int8, torch.float64, torch.complex64, torch.bool]))
    elif kind == 2:
        sd[name] = torch.zeros(tuple(s + 1 for s in sd[name].shape) or (3,))
    elif kind == 3:
        del sd[name]
    elif kind == 4:
        sd = rng.choice([[1, 2, 3], torch.zeros(3), "state", None, {"nested": sd}])
    elif kind == 5:
        sd[name] = torch.full_like(sd[name].float(), float("nan"))
    else:
        sd = {k: (v.to(torch.float16) if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
              for k, v in sd.items()}
    torch.save(sd, path)
    return f"torch pickle mutation {kind} on {name}"


def mutate_npz(path: Path, rng: random.Random) -> str:
    """npz corruptions: member .npy headers claiming huge shapes, wrong dtypes, missing arrays."""
    arrays = dict(np.load(path))
    name = rng.choice(list(arrays))
    kind = rng.randrange(5)
    if kind == 0:  # a member whose .npy header claims a huge shape while holding a few bytes
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            for k, v in arrays.items():
                member = io.BytesIO()
                np.save(member, v)
                data = member.getvalue()
                if k == name:
                    hdr = f"{{'descr': '<f4', 'fortran_order': False, 'shape': ({2 ** 40}, {2 ** 20}), }}".encode()
                    hdr = hdr + b" " * (118 - len(hdr)) + b"\n"
                    data = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(hdr)) + hdr + data[-64:]
                z.writestr(k + ".npy", data)
        path.write_bytes(buf.getvalue())
        return f"npz {name} header claims [2**40, 2**20]"
    if kind == 1:
        arrays[name] = arrays[name].astype(rng.choice([np.int8, np.float64, np.complex64, np.bool_]))
    elif kind == 2:
        del arrays[name]
    elif kind == 3:
        arrays[name] = np.zeros([s + 1 for s in arrays[name].shape], dtype=np.float32)
    else:
        arrays[name] = np.full_like(arrays[name], np.nan)
    np.savez(path, **arrays)
    return f"npz mutation {kind} on {name}"


def corrupt(target: Path, rng: random.Random) -> str:
    """Apply one seeded corruption to one file of a valid SAE (file or directory). Returns a description."""
    path = rng.choice(files_of(target))
    structured = {".safetensors": [mutate_safetensors_header, hostile_number_safetensors],
                  ".json": [mutate_json, hostile_number_json],
                  ".pt": [mutate_torch_pickle, mutate_torch_zip], ".npz": [mutate_npz, mutate_npz_bomb]}.get(path.suffix)
    if structured is not None and rng.random() < 0.7:
        return rng.choice(structured)(path, rng)
    return rng.choice(BYTE_MUTATORS)(path, rng)


def hostile_pickle_bytes(sentinel: Path) -> bytes:
    """A torch.save file whose unpickling would create ``sentinel`` (via os.system)."""

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {sentinel}",))

    buf = io.BytesIO()
    torch.save({"encoder.weight": torch.zeros(2, 2), "evil": Payload()}, buf)
    return buf.getvalue()


def vm_size_mb() -> float:
    """Current virtual address space of this process, in MB (Linux /proc)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) / 1024
    return 0.0


@contextlib.contextmanager
def address_space_limit(extra_mb: float = 2048):
    """Cap the address space at its current size + ``extra_mb`` for the block (restored afterwards), so a reader
    that believes a header claiming terabytes fails fast with an allocation error instead of driving the shared
    machine into swap or the OOM killer. Only the soft limit changes, so it can be raised back."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = int((vm_size_mb() + extra_mb) * 1024 * 1024)
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


# --- child processes that can be SIGKILLed: forked from a forkserver with torch + saescope already imported ------

def train_child(mode: str, args: list, log_path: str) -> None:
    """Entry point of a killable training process. mode "cli": ``saescope.cli.main(args)``; mode "api":
    ``train_sae(np.load(args[0]), TrainConfig.from_json(args[1]), out_dir=args[2], resume=args[3])``.
    stdout/stderr go to ``log_path``; the exit code is the CLI's."""
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.environ["SAESCOPE_NO_PROGRESS"] = "1"
    torch.set_num_threads(1)
    code = 0
    try:
        if mode == "cli":
            from saescope.cli import main
            code = main(list(args))
        else:
            from saescope.train import TrainConfig, train_sae
            acts, cfg_json, out, resume = args
            train_sae(torch.from_numpy(np.load(acts)), TrainConfig.from_json(Path(cfg_json).read_text()),
                      out_dir=out, resume=resume)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 2
    except BaseException:  # noqa: BLE001
        import traceback
        traceback.print_exc()
        code = 1
    sys_stdout_flush()
    os._exit(int(code or 0))


def sys_stdout_flush() -> None:
    import sys
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001
            pass


_CTX = None


def killable_context():
    """A multiprocessing context whose children fork from a server that pre-imported torch and saescope
    (a fresh interpreter costs seconds on this machine; a fork from the server costs milliseconds)."""
    global _CTX
    if _CTX is None:
        import multiprocessing as mp
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["torch", "torch._dynamo", "torch.optim", "safetensors.torch", "numpy", "saescope.cli", "saescope.train", "saescope.sae", "fuzz_util",
                                  "saescope.cli.train", "saescope.cli.interp", "saescope.cli.report", "saescope.cli.evals",
                                  "saescope.cli.sae_cmds", "saescope.cli.demo"])
        _CTX = ctx
    return _CTX


# --- hostile numbers, compression bombs, size claims (shared with benchmarks/hostile_bombs.py) -------------------

# Values a JSON or pickle field may carry that no SAE size or scale can take; "HUGE_INT" becomes a 5000-digit
# integer literal in JSON text (beyond Python's int-parsing limit), "1e999" a float literal that parses to inf.
HOSTILE_NUMBERS = [float("inf"), float("-inf"), float("nan"), 1e308, 2 ** 70, -(2 ** 63), 10 ** 30, 1e-320,
                   4.5, "HUGE_INT", "1e999"]
NUMERIC_KEYS = ("d_in", "d_sae", "k", "d_out", "num_latents", "expansion_factor", "dict_size", "activation_dim",
                "act_size", "context_size", "hook_head_index", "input_scale", "layer", "matryoshka_widths")


def dump_json_hostile(obj) -> str:
    """JSON text allowing NaN/Infinity, with the HUGE_INT / 1e999 placeholders written as raw literals."""
    text = json.dumps(obj, allow_nan=True)
    return text.replace('"HUGE_INT"', "9" * 5000).replace('"1e999"', "1e999")


def hostile_number_json(path: Path, rng: random.Random) -> str:
    """Put a hostile number into a numeric field of a JSON config (nested ones included)."""
    obj = json.loads(path.read_text())
    slots = []

    def walk(d):
        if isinstance(d, dict):
            for k, v in d.items():
                if k in NUMERIC_KEYS or isinstance(v, (int, float)) and not isinstance(v, bool):
                    slots.append((d, k))
                walk(v)

    walk(obj)
    if not slots:
        return mutate_json(path, rng)
    d, key = rng.choice(slots)
    value = rng.choice(HOSTILE_NUMBERS)
    d[key] = [value, value] if key == "matryoshka_widths" else value
    path.write_text(dump_json_hostile(obj))
    return f"{key}={value!r}"


def hostile_number_safetensors(path: Path, rng: random.Random) -> str:
    """A safetensors header whose shape or offsets hold a hostile number."""
    header, body = read_safetensors(path)
    name = rng.choice([k for k in header if k != "__metadata__"])
    value = rng.choice(HOSTILE_NUMBERS)
    field_ = rng.choice(["shape", "data_offsets"])
    header[name][field_] = [value] + list(header[name][field_])[1:]
    write_safetensors_raw(path, dump_json_hostile(header).encode(), body)
    return f"safetensors {name}.{field_}[0]={value!r}"


def _npy_bytes(shape, fill_bytes: bytes = b"") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": tuple(shape)})
    return buf.getvalue() + fill_bytes


def npz_compression_bomb(path: Path, claim_bytes: int = 2 ** 30, d_in: int = 2304) -> Path:
    """A *valid* params.npz whose W_enc is ``claim_bytes`` of float32 zeros, deflated (~1000x smaller): numpy
    would inflate all of it (then torch copies it) before any check on the values."""
    d_sae = claim_bytes // (4 * d_in)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        with zf.open("W_enc.npy", "w", force_zip64=True) as f:
            f.write(_npy_bytes((d_in, d_sae)))
            chunk = bytes(2 ** 24)
            left = 4 * d_in * d_sae
            while left > 0:
                f.write(chunk[: min(left, len(chunk))])
                left -= len(chunk)
        for name, arr in _weights(0).items():  # the other members small and honest
            if name != "W_enc":
                member = io.BytesIO()
                np.save(member, arr.numpy())
                zf.writestr(name + ".npy", member.getvalue())
        member = io.BytesIO()
        np.save(member, np.full(D_SAE, 0.05, np.float32))
        zf.writestr("threshold.npy", member.getvalue())
    return path


def npz_size_lie(path: Path, claim_bytes: int = 2 ** 30) -> Path:
    """A params.npz whose zip entry *declares* ``claim_bytes`` uncompressed (header shape to match) while its
    deflated data holds a few bytes: the zip header is as untrusted as the rest."""
    d_in = 8
    shape = (d_in, (claim_bytes - 128) // (4 * d_in))
    import zlib
    payload = _npy_bytes(shape, b"\x00" * 64)
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    data = comp.compress(payload) + comp.flush()
    info = zipfile.ZipInfo("W_enc.npy")
    info.compress_type = zipfile.ZIP_DEFLATED
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(info, payload)
    raw = bytearray(path.read_bytes())  # rewrite the declared sizes (local header and central directory)
    declared = len(payload)
    for marker in (b"PK\x03\x04", b"PK\x01\x02"):
        i = raw.index(marker)
        off = 22 if marker == b"PK\x03\x04" else 24
        assert struct.unpack("<I", raw[i + off:i + off + 4])[0] == declared
        raw[i + off:i + off + 4] = struct.pack("<I", min(claim_bytes, 2 ** 32 - 2))
    path.write_bytes(bytes(raw))
    del data
    return path


class _Storage:
    """Pickled as a torch storage reference ('storage', torch.FloatStorage, key, 'cpu', numel)."""

    def __init__(self, key: str, numel: int):
        self.key, self.numel = key, numel


class _Tensor:
    def __init__(self, storage: _Storage, size, stride, offset: int = 0):
        self.args = (storage, offset, tuple(size), tuple(stride), False, __import__("collections").OrderedDict())

    def __reduce__(self):
        import torch._utils
        return (torch._utils._rebuild_tensor_v2, self.args)


def write_torch_zip(path: Path, obj, storages: dict[str, bytes], compress: bool = False,
                    declared: dict[str, int] | None = None) -> Path:
    """A zip .pt in torch.save's layout, with a hand-made pickle: lets a file claim sizes it does not hold."""
    import pickle

    class P(pickle.Pickler):
        def persistent_id(self, o):
            if isinstance(o, _Storage):
                return ("storage", torch.FloatStorage, o.key, "cpu", o.numel)
            return None

    buf = io.BytesIO()
    P(buf, protocol=2).dump(obj)
    mode = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", mode) as zf:
        zf.writestr("archive/data.pkl", buf.getvalue())
        zf.writestr("archive/byteorder", b"little")
        zf.writestr("archive/version", b"3\n")
        for key, data in storages.items():
            if isinstance(data, int):  # that many zero bytes, streamed
                with zf.open(f"archive/data/{key}", "w", force_zip64=True) as f:
                    chunk = bytes(2 ** 24)
                    left = data
                    while left > 0:
                        f.write(chunk[: min(left, len(chunk))])
                        left -= len(chunk)
            else:
                zf.writestr(f"archive/data/{key}", data)
    return path


def pt_compression_bomb(path: Path, claim_bytes: int = 2 ** 30, d_in: int = 2304) -> Path:
    """A *valid* dictionary_learning-style ae.pt whose encoder weight storage is ``claim_bytes`` of deflated
    zeros: ``torch.load`` inflates it all."""
    d_sae = claim_bytes // (4 * d_in)
    s = _Storage("0", d_sae * d_in)
    obj = {"encoder.weight": _Tensor(s, (d_sae, d_in), (d_in, 1))}
    return write_torch_zip(path, obj, {"0": 4 * d_sae * d_in}, compress=True)


def pt_storage_claim(path: Path, claim_numel: int = 2 ** 28) -> Path:
    """A zip .pt whose pickle declares a 1 GiB storage backed by 16 bytes."""
    s = _Storage("0", claim_numel)
    return write_torch_zip(path, {"encoder.weight": _Tensor(s, (claim_numel // 8, 8), (8, 1))}, {"0": bytes(16)})


def pt_tensor_past_storage(path: Path) -> Path:
    """A zip .pt whose tensor view reaches far past its (honest, 16-byte) storage."""
    s = _Storage("0", 4)
    return write_torch_zip(path, {"encoder.weight": _Tensor(s, (2 ** 20, 2 ** 10), (2 ** 10, 1))}, {"0": bytes(16)})


def pt_legacy_claim(path: Path, claim_numel: int = 2 ** 28) -> Path:
    """A pre-zip torch.save file whose storage numel (in the pickle and the data section) claims 1 GiB."""
    n = 1000003
    buf = io.BytesIO()
    torch.save({"encoder.weight": torch.zeros(n)}, buf, _use_new_zipfile_serialization=False)
    data = buf.getvalue()
    i = data.index(b"J" + struct.pack("<i", n))
    data = data[:i] + b"J" + struct.pack("<i", claim_numel) + data[i + 5:]
    j = data.rindex(struct.pack("<q", n))
    path.write_bytes(data[:j] + struct.pack("<q", claim_numel) + data[j + 8:j + 8 + 64])
    return path


def safetensors_shape_claim(path: Path) -> Path:
    """sae_weights.safetensors (with cfg.json beside it) whose header claims W_enc [2**40, 2**20]."""
    d = write_saelens_v6(path)
    header, body = read_safetensors(d / "sae_weights.safetensors")
    header["W_enc"]["shape"] = [2 ** 40, 2 ** 20]
    header["W_enc"]["data_offsets"] = [0, 4 * 2 ** 60]
    write_safetensors_raw(d / "sae_weights.safetensors", header, body)
    return d


def cfg_width_claim(path: Path, d_sae: int = 2 ** 24) -> Path:
    """cfg.json claiming d_sae = 2**24 (the largest accepted) beside tiny weights, with a scalar topk_threshold
    that a reader would broadcast to [d_sae] (a BatchTopK training checkpoint)."""
    d = write_saelens_v6(path)
    cfg = json.loads((d / "cfg.json").read_text())
    cfg.update(architecture="batchtopk", d_sae=d_sae, k=4)
    (d / "cfg.json").write_text(json.dumps(cfg))
    w = _weights(0)
    w["topk_threshold"] = torch.tensor(0.1, dtype=torch.float64)
    save_file(w, str(d / "sae_weights.safetensors"))
    return d


BOMBS = {  # name -> (builder(dir) -> path to SAE.load, what it claims)
    "npz_deflate_1GiB": (lambda d: npz_compression_bomb(d / "params.npz"), "valid npz, 1 GiB of deflated zeros"),
    "npz_zip_size_lie": (lambda d: npz_size_lie(d / "params.npz"), "npz entry declaring 1 GiB, holding 64 B"),
    "pt_deflate_1GiB": (lambda d: pt_compression_bomb(d / "ae.pt"), "valid zip .pt, 1 GiB deflated storage"),
    "pt_storage_claim": (lambda d: pt_storage_claim(d / "ae.pt"), "pickle declaring a 1 GiB storage of 16 B"),
    "pt_view_past_storage": (lambda d: pt_tensor_past_storage(d / "ae.pt"), "tensor view 4 GiB past its storage"),
    "pt_legacy_claim": (lambda d: pt_legacy_claim(d / "ae.pt"), "pre-zip .pt declaring a 1 GiB storage"),
    "safetensors_shape": (safetensors_shape_claim, "header shape [2**40, 2**20]"),
    "cfg_width_vs_weights": (cfg_width_claim, "cfg d_sae=2**24 + scalar threshold to broadcast"),
}


def mutate_npz_bomb(path: Path, rng: random.Random) -> str:
    """An npz whose member is a (small) compression bomb, or whose zip header lies about its size."""
    if rng.random() < 0.5:
        npz_compression_bomb(path, claim_bytes=rng.choice([2 ** 24, 2 ** 26]), d_in=D_IN)
        return "npz deflate bomb"
    npz_size_lie(path, claim_bytes=rng.choice([2 ** 20, 2 ** 30, 2 ** 32 - 2]))
    return "npz zip header size lie"


def mutate_torch_zip(path: Path, rng: random.Random) -> str:
    """Zip-level attacks on a .pt: a storage claim, a view past its storage, a deflate bomb, hostile numbers in
    the pickle (k), or an honest recompression (must still load)."""
    kind = rng.randrange(5)
    if kind == 0:
        pt_storage_claim(path, claim_numel=rng.choice([2 ** 20, 2 ** 28, 2 ** 40]))
        return "pt storage claim"
    if kind == 1:
        pt_tensor_past_storage(path)
        return "pt view past storage"
    if kind == 2:
        pt_compression_bomb(path, claim_bytes=2 ** 24, d_in=D_IN)
        return "pt deflate bomb"
    sd = torch.load(path, weights_only=True)
    if kind == 3:
        key = rng.choice([k for k in ("k", "activation_state_dict") if k in sd] or ["k"])
        value = rng.choice([float("inf"), float("nan"), 2 ** 70, -3, 1e308])
        sd[key] = {"k": value} if key == "activation_state_dict" else value
        torch.save(sd, path)
        return f"pt {key} = {value!r}"
    buf = io.BytesIO()
    torch.save(sd, buf)
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    return "pt recompressed with deflate (valid)"
