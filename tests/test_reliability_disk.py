"""Files under pressure: the modes written files get (the user's umask, never mkstemp's 0600) and a full disk.

A full disk is simulated for a real CLI subprocess with ``RLIMIT_FSIZE`` (SIGXFSZ ignored): any write that
would grow a file past the limit fails with EFBIG, exactly where a full disk fails with ENOSPC. The limit is set
by a two-line launcher (``python -c``) instead of ``preexec_fn``, which is unsafe when the parent has threads
(torch's pools do). Each command must then exit 2 with one stderr line naming the file, no traceback, leave
the files that existed before byte-identical, and a rerun without the limit must succeed and leave no temp file.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from saescope import _io
from saescope.errors import DiskFullError

LAUNCH = ("import resource, runpy, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
          "n = int(sys.argv.pop(1)); n > 0 and resource.setrlimit(resource.RLIMIT_FSIZE, (n, n)); "
          "sys.argv[0] = 'saescope'; runpy.run_module('saescope', run_name='__main__')")
TEMP = re.compile(r"\.tmp$|\.tmp\d+$|\.partial")


def saescope(args: list[str], limit: int = 0, cwd: Path | None = None, timeout: float = 240):
    """``python -m saescope ARGS`` whose files may not grow past ``limit`` bytes (0: no limit)."""
    env = {**os.environ, "SAESCOPE_NO_PROGRESS": "1"}
    env.pop("SAESCOPE_DEBUG", None)
    return subprocess.run([sys.executable, "-c", LAUNCH, str(limit), *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=timeout, stdin=subprocess.DEVNULL)


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


def temp_files(root: Path) -> list[str]:
    return [str(p) for p in root.rglob("*") if TEMP.search(p.name) or p.name.startswith(".") and p.is_dir()]


def assert_one_line_disk_error(proc, name: str) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].startswith("error: cannot write ") and name in lines[0], lines[0]
    assert re.search(r"File too large|disk I/O error|No space", lines[0]), lines[0]
    return lines[0]


# ================================================================================ file modes

@pytest.fixture(params=[0o022, 0o077, 0o027], ids=lambda m: f"umask{m:03o}")
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def _modes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mode & 0o777 for p in root.rglob("*") if p.is_file()}


def test_written_files_follow_the_umask(umask, tmp_path):
    """Harvest shards, meta.json, train_config.json, metrics.jsonl, checkpoints, SAE files, labels, plots and
    dashboard pages: every file gets 0o666 & ~umask (0644 under 022, 0600 under 077)."""
    from saescope.data.activations import ActivationCache
    from saescope.evals.plot import plot_l0_vs_ev
    from saescope.interp.autolabel import save_labels
    from saescope.train import TrainConfig, train_sae
    from saescope.train.checkpoint import truncate_metrics

    cache = ActivationCache.create(tmp_path / "harvest", 16, {"hook": "x"}, shard_tokens=64)
    cache.append(torch.randn(100, 16), contexts=2)
    cache.finalize()
    cfg = TrainConfig(architecture="topk", d_sae=32, k=4, batch_size=64, total_tokens=64 * 6, checkpoint_every=2,
                      plots=False, init_sample_tokens=256, seed=0)
    train_sae(torch.randn(1024, 16), cfg, out_dir=tmp_path / "run")
    truncate_metrics(tmp_path / "run" / "metrics.jsonl", 3)
    save_labels({1: "one"}, tmp_path / "run")
    plot_l0_vs_ev([{"l0": 4.0, "explained_variance": 0.5, "sae": "a"}], tmp_path / "run" / "plot.png")
    _io.atomic_write_json(tmp_path / "plain.json", {"a": 1})
    _io.atomic_write_text(tmp_path / "page.html", "<p>x</p>", durable=False)
    modes = _modes(tmp_path)
    expected = 0o666 & ~umask
    for name in ("harvest/meta.json", "harvest/shard_00000.npy", "run/train_config.json", "run/metrics.jsonl",
                 "run/checkpoint/state.pt", "run/sae_weights.safetensors", "run/cfg.json", "run/labels.json",
                 "run/plot.png", "plain.json", "page.html"):
        assert name in modes, sorted(modes)
    wrong = {k: oct(v) for k, v in modes.items() if v != expected}
    assert not wrong, f"expected {oct(expected)}: {wrong}"


def test_dashboard_pages_follow_the_umask(umask, tmp_path, gpt2_dir):
    from report_helpers import make_corpus, make_sae
    from saescope.lm import LanguageModel
    from saescope.report import StatsConfig, build_dashboard

    lm = LanguageModel.from_pretrained(str(gpt2_dir))
    sae = make_sae(lm.name, tmp_path / "sae", d_sae=16, k=2)
    cfg = StatsConfig(n_tokens=4 * 16, context_size=16, batch_size=4, top_k=2, window=2, checkpoint_every=0)
    build_dashboard(lm, sae, make_corpus(4, 16), tmp_path / "dash", cfg)
    modes = _modes(tmp_path / "dash")
    assert "index.html" in modes and "features/3.html" in modes
    assert {k for k, v in modes.items() if v != 0o666 & ~umask} <= {"features.sqlite"}, modes   # SQLite: its own
    assert modes["features.sqlite"] & ~(0o666 & ~umask) == 0


# ================================================================================ the _io contract

def test_disk_full_inside_a_write_is_one_line_and_keeps_the_old_file(tmp_path):
    path = tmp_path / "data.bin"
    path.write_bytes(b"previous")

    def fill_then_fail(exc):
        def write(f):
            f.write(b"partial bytes")
            raise exc
        return write

    full = OSError(errno.ENOSPC, "No space left on device")
    wrapped = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    wrapped.__context__ = OSError(errno.EFBIG, "File too large")
    rust = Exception("Error while serializing: I/O error: Disk quota exceeded (os error 122)")
    for exc in (full, wrapped, rust, OSError(errno.EFBIG, "File too large")):
        with pytest.raises(DiskFullError) as info:
            _io.atomic_write_bytes(path, fill_then_fail(exc))
        msg = str(info.value)
        assert "\n" not in msg and str(path) in msg, msg
        assert path.read_bytes() == b"previous"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["data.bin"]
    with pytest.raises(ValueError):   # anything else is not a disk error and passes unchanged
        _io.atomic_write_bytes(path, fill_then_fail(ValueError("bug")))
    with pytest.raises(PermissionError):
        _io.atomic_write_bytes(path, fill_then_fail(PermissionError(errno.EACCES, "denied")))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.bin"]


def test_disk_full_path_writer_and_sqlite(tmp_path):
    """A writer that wants a path (safetensors) and SQLite's "database or disk is full" map the same way."""
    import sqlite3

    def safetensors_like(tmp):
        Path(tmp).write_bytes(b"x" * 10)
        raise Exception("Error while serializing: I/O error: No space left on device (os error 28)")

    with pytest.raises(DiskFullError, match="w.safetensors"):
        _io.atomic_write_path(tmp_path / "w.safetensors", safetensors_like)
    assert list(tmp_path.iterdir()) == []
    exc = sqlite3.OperationalError("database or disk is full")
    exc.sqlite_errorcode = 13
    with pytest.raises(DiskFullError, match="features.sqlite"):
        with _io.disk_errors(tmp_path / "features.sqlite"):
            raise exc


def test_cli_maps_a_stray_disk_full_error_to_one_line(monkeypatch, capsys):
    """An OSError(ENOSPC) or a library error caused by one, escaping a command: one line, exit 2."""
    from saescope import cli

    def torch_like(args):
        try:
            raise OSError(errno.EFBIG, "File too large", "/out/big.bin")
        except OSError:
            raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed") from None

    def plain(args):
        raise OSError(errno.ENOSPC, "No space left on device")

    for handler, where in ((torch_like, "/out/big.bin"), (plain, "a file")):
        monkeypatch.setattr(cli.argparse.ArgumentParser, "parse_args",
                            lambda self, argv=None, namespace=None, h=handler: cli.argparse.Namespace(verbose=False, handler=h))
        assert cli.main([]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"error: cannot write {where}:"), err


# ================================================================================ full disk, real commands

@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    from saescope.sae import SAE, SAEConfig, SAEMetadata

    root = tmp_path_factory.mktemp("diskfull")
    meta = SAEMetadata(model_name="tiny", hook_name="blocks.2.hook_resid_pre")
    SAE(SAEConfig("topk", d_in=256, d_sae=128, k=4, metadata=meta), seed=0).save(root / "sae_src")   # 256 KiB weights
    SAE(SAEConfig("topk", d_in=256, d_sae=48, k=4, metadata=meta), seed=1).save(root / "sae_small")
    np.save(root / "acts.npy", np.random.default_rng(0).standard_normal((2048, 64)).astype(np.float32))
    (root / "corpus.txt").write_text("\n".join(f"{i} the quick brown fox jumps over the lazy dog, and then some."
                                               for i in range(200)))
    return root


def run_in_process(args: list) -> int:
    """The same command in this process, without a limit (the reruns that must succeed)."""
    from saescope.cli import main

    return main([str(a) for a in args])


def test_convert_disk_full(ws):
    before = snapshot(ws)
    proc = saescope(["convert", ws / "sae_src", ws / "converted"], limit=64 * 1024)
    assert_one_line_disk_error(proc, "sae_weights.safetensors")
    assert snapshot(ws) == before, "a failed convert changed or left files"
    assert run_in_process(["convert", ws / "sae_src", ws / "converted"]) == 0
    assert (ws / "converted" / "sae_weights.safetensors").is_file() and not temp_files(ws)


def test_train_checkpoint_disk_full(ws, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--activations", ws / "acts.npy", "--architecture", "topk", "--k", "4", "--expansion", "2",
            "--batch-size", "256", "--tokens", "2048", "--checkpoint-every", "2", "--out", out, "--no-plots"]
    proc = saescope(args, limit=40 * 1024)                       # train_config.json fits, state.pt does not
    assert_one_line_disk_error(proc, "state.pt")
    assert not (out / "checkpoint" / "state.pt").exists() and not temp_files(out)
    before = snapshot(out)
    assert json.loads((out / "train_config.json").read_text())["k"] == 4
    proc = saescope([*args, "--resume"], limit=40 * 1024)
    assert_one_line_disk_error(proc, "state.pt")
    assert snapshot(out) == before, "the files of the first attempt changed"
    assert run_in_process([*args, "--resume"]) == 0
    assert (out / "sae_weights.safetensors").is_file() and (out / "checkpoint" / "state.pt").is_file()
    assert not temp_files(out)


def test_harvest_disk_full(ws, tmp_path):
    out = tmp_path / "acts"
    args = ["harvest", "--model", "tiny", "--hook", "blocks.1.hook_resid_pre", "--dataset", ws / "corpus.txt",
            "--tokens", "600", "--context-size", "32", "--out", out]
    proc = saescope(args, limit=32 * 1024)                       # meta.json fits, the rows (600 x 256 x 4) do not
    assert_one_line_disk_error(proc, "tail.bin")                 # rows are committed to tail.bin before a shard
    meta = json.loads((out / "meta.json").read_text())           # as written before the rows: intact, nothing kept
    assert meta["n_tokens"] == 0 and meta["tail_rows"] == 0 and meta["shards"] == []
    assert sorted(snapshot(out)) == ["meta.json", "tail.bin"] and (out / "tail.bin").stat().st_size == 0
    assert run_in_process(args) == 0
    assert json.loads((out / "meta.json").read_text())["n_tokens"] >= 600 and not temp_files(out)


def test_dashboard_disk_full(ws, tmp_path):
    out = tmp_path / "dash"
    args = ["dashboard", "--model", "tiny", "--sae", ws / "sae_small", "--dataset", ws / "corpus.txt",
            "--tokens", "256", "--context-size", "32", "--out", out]
    assert run_in_process(args) == 0
    before = snapshot(out)
    proc = saescope(args, limit=12 * 1024)                       # the store's first 16 KiB page does not fit
    assert_one_line_disk_error(proc, "features.sqlite")
    after = {k: v for k, v in snapshot(out).items() if not TEMP.search(k)}
    assert after == before, "the previous dashboard changed"
    assert run_in_process(args) == 0
    assert not temp_files(out) and snapshot(out).keys() == before.keys()
