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


FORMATS = {
    "saelens_v6": write_saelens_v6,
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
        sd[name] = torch.zeros(*(s + 1 for s in sd[name].shape))
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
    structured = {".safetensors": mutate_safetensors_header, ".json": mutate_json,
                  ".pt": mutate_torch_pickle, ".npz": mutate_npz}.get(path.suffix)
    if structured is not None and rng.random() < 0.55:
        return structured(path, rng)
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
