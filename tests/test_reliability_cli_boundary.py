"""The CLI error boundary, second round: absurd numbers in flags, control characters in the values an error
names (one line on stderr, always, with the value escaped rather than dropped), and dependency warnings that
must not bury the one line, while saescope's own log warnings stay visible.
"""
from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from saescope.cli import main

RAW_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f\u2028\u2029]")


def run(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exc:        # argparse usage errors
            code = exc.code
    return code, err.getvalue()


def one_line(code: int, err: str, expect: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]   # str.splitlines also splits at \x1c-\x1e, \x85, \u2028/9
    assert code == 2, (code, err)
    assert len(lines) == 1 and "Traceback" not in err, repr(err)
    assert not RAW_CONTROL.search(err.rstrip("\n")), repr(err)
    assert re.search(expect, lines[0], re.I), lines[0]
    return lines[0]


# ================================================================================ numbers in flags

STEER = ["steer", "The cat", "--feature", "3", "--strength", "1", "--max-new-tokens", "2"]
BAD_FLAGS = [
    (["--temperature", "-1e-320"], "temperature"), (["--temperature", "1e999"], "temperature"),
    (["--temperature", "nan"], "temperature"), (["--temperature", "101"], "temperature"),
    (["--top-p", "0"], "top-p"), (["--top-p", "-1e-320"], "top-p"), (["--top-p", "1.5"], "top-p"),
    (["--seed", str(2**64)], "seed"), (["--seed", str(2**70)], "seed"), (["--seed", "-1"], "seed"),
    (["--seed", "1.5"], "seed"), (["--seed", "9" * 5000], "seed"),
    (["--positions", "at:99999999999999999999"], "positions"), (["--positions", "from:99999999999999999999"], "positions"),
    (["--positions", "at:2147483648"], "positions"), (["--positions", "from:-1"], "positions"),
    (["--positions", "at:1e3"], "positions"), (["--positions", ""], "positions"), (["--positions", "at:\n1"], "positions"),
    (["--max-new-tokens", "9" * 5000], "max-new-tokens"), (["--max-new-tokens", "0x10"], "max-new-tokens"),
]


@pytest.mark.parametrize("flags,name", BAD_FLAGS, ids=[f"{f[0]}={f[1][:20]!r}" for f, _ in BAD_FLAGS])
def test_absurd_flag_values(flags, name):
    code, err = run([*STEER, *flags])
    line = one_line(code, err, name)
    assert len(line) < 300, line


@pytest.mark.parametrize("command", [
    ["train", "--activations", "x.npy", "--out", "o"], ["harvest", "--model", "m", "--hook", "h", "--dataset", "d",
                                                        "--tokens", "5", "--out", "o"],
    ["eval", "--dataset", "d"], ["dashboard", "--dataset", "d", "--out", "o"]], ids=lambda c: c[0])
@pytest.mark.parametrize("seed", [str(2**64), str(2**70), "-5"])
def test_seed_range_in_every_command(command, seed):
    code, err = run([*command, "--seed", seed])
    one_line(code, err, r"--seed")


@pytest.mark.parametrize("flags", [["--top-p", "1e-320"], ["--top-p", "5e-324"], ["--positions", "at:2147483647"],
                                   ["--seed", str(2**32 - 1)], ["--temperature", "0", "--positions", "from:1"]],
                         ids=lambda f: " ".join(f))
def test_tiny_but_valid_flag_values_run(flags, capsys):
    assert main([*STEER, *flags, "--json"]) == 0, capsys.readouterr().err


@pytest.mark.parametrize("t", ["1e-45", "1e-320"])
def test_tiny_temperature_runs(t, capsys):
    """Tiny positive temperatures are valid (effectively greedy): they run, never a 422, a 500 or exit 1."""
    assert main([*STEER, "--temperature", t, "--json"]) == 0, capsys.readouterr().err


# ================================================================================ control characters

@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    from saescope.sae import SAE, SAEConfig, SAEMetadata

    root = tmp_path_factory.mktemp("ctl")
    SAE(SAEConfig("relu", d_in=64, d_sae=32, metadata=SAEMetadata(hook_name="blocks.1.hook_resid_pre"))).save(root / "sae")
    (root / "file\nwith newline").write_text("x")
    (root / "esc\x1b[31mred").mkdir()
    (root / "esc\x1b[31mred" / "keep").write_text("x")
    (root / "line\u2028sep").write_text("x")
    (root / "tab\there").write_text("x")
    (root / "cr\rhere").write_text("x")
    np.save(root / "acts.npy", np.random.default_rng(0).standard_normal((512, 64)).astype(np.float32))
    return root


CONTROL_CASES = [  # (argv, the escaped form the one line must contain)
    (lambda r: ["dashboard", "--dataset", "d.txt", "--out", r / "file\nwith newline"], r"file\\nwith newline"),
    (lambda r: ["train", "--activations", r / "acts.npy", "--out", r / "file\nwith newline"], r"file\\nwith newline"),
    (lambda r: ["train", "--activations", r / "acts.npy", "--out", r / "tab\there"], r"tab\\there"),
    (lambda r: ["convert", r / "sae", r / "esc\x1b[31mred"], r"esc\\x1b\[31mred"),
    (lambda r: ["convert", r / "sae", r / "cr\rhere"], r"cr\\rhere"),
    (lambda r: ["convert", r / "no\nsuch", r / "out1"], r"no\\nsuch"),
    (lambda r: ["train", "--activations", r / "missing\n.npy", "--out", r / "o2"], r"missing\\n\.npy"),
    (lambda r: ["harvest", "--model", "tiny", "--hook", "blocks.1.hook_resid_pre", "--dataset", "d.txt", "--tokens", "8",
                "--out", r / "file\nwith newline" / "sub"], r"file\\nwith newline"),
    (lambda r: ["dashboard", "--dataset", "d.txt", "--out", r / "line\u2028sep"], r"line\\u2028sep"),
    (lambda r: ["convert", r / "sae", r / os.fsdecode(b"bad\xffname") / "x" / "y"], r"bad\\udcffname"),
    (lambda r: ["read", "x", "--model", "tiny", "--sae", r / "nope\n\x1b]0;title\x07"], r"nope\\n\\x1b\]0;title\\x07"),
]


@pytest.mark.parametrize("case", range(len(CONTROL_CASES)))
def test_control_characters_stay_on_one_line(ws, case, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d.txt").write_text("some text\n")
    if case == 9:
        (ws / os.fsdecode(b"bad\xffname")).write_text("a file where a directory is needed")
    argv, expect = CONTROL_CASES[case]
    code, err = run(argv(ws))
    one_line(code, err, expect)


def test_log_records_are_one_line_too(capsys, monkeypatch):
    """saescope's own log lines go through the same escaping (a path with a newline in a warning)."""
    import logging

    from saescope import cli

    def handler(args):
        logging.getLogger("saescope.test").warning("ignoring %s: not readable", "a\nb.json")
        return 0

    monkeypatch.setattr(cli.argparse.ArgumentParser, "parse_args",
                        lambda self, argv=None, namespace=None: cli.argparse.Namespace(verbose=False, handler=handler))
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])          # as in a fresh process: main() installs its handler
    try:
        assert cli.main([]) == 0
    finally:
        for h in root.handlers:
            h.close()
    assert capsys.readouterr().err == "WARNING: ignoring a\\nb.json: not readable\n"


# ================================================================================ warnings

def _subprocess(args):
    env = {**os.environ, "SAESCOPE_NO_PROGRESS": "1"}
    for k in ("SAESCOPE_DEBUG", "PYTHONWARNINGS", "TRANSFORMERS_VERBOSITY", "HF_HUB_VERBOSITY"):
        env.pop(k, None)
    return subprocess.run([sys.executable, "-m", "saescope", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=240, stdin=subprocess.DEVNULL)


def test_dependency_warnings_do_not_precede_the_error(ws, tmp_path):
    """`train --lr 1e38` printed three lines of a torch UserWarning before its error: now exactly the error."""
    proc = _subprocess(["train", "--activations", ws / "acts.npy", "--architecture", "topk", "--k", "4", "--expansion",
                        "2", "--batch-size", "128", "--tokens", "512", "--out", tmp_path / "run", "--lr", "1e38",
                        "--no-plots"])
    assert proc.returncode == 2 and proc.stderr.splitlines() == [proc.stderr.strip()], proc.stderr
    assert proc.stderr.startswith("error: training diverged"), proc.stderr


def test_own_log_warnings_stay_visible(ws, tmp_path):
    """Rows of NaN in the activations: saescope's own warning (a log record) is still shown, on one line."""
    acts = np.load(ws / "acts.npy")
    acts[10:20, 3] = np.nan
    np.save(tmp_path / "nan.npy", acts)
    proc = _subprocess(["train", "--activations", tmp_path / "nan.npy", "--architecture", "topk", "--k", "4",
                        "--expansion", "2", "--batch-size", "128", "--tokens", "512", "--out", tmp_path / "run",
                        "--no-plots"])
    assert proc.returncode == 0, proc.stderr
    warns = [ln for ln in proc.stderr.splitlines() if ln.startswith("WARNING:")]
    assert any(re.search("nan|non-finite|nonfinite", ln, re.I) for ln in warns), proc.stderr
    assert "Warning:" not in proc.stderr and "warnings.warn" not in proc.stderr, proc.stderr
