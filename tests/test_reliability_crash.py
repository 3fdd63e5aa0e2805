"""Crash safety of training: SIGKILL a real training process at seeded random moments, including while it
writes a checkpoint and right after it replaced one, then resume; repeat until the run finishes.

Checks, for every trial: the final weights are bit-identical (torch.equal) to an uninterrupted run; every
checkpoint file present after any kill loads with weights_only=True (no torn checkpoint); metrics.jsonl of the
finished run has the reference's steps, no duplicates, no gaps, and the same losses; no temporary files are left.

Processes fork from a forkserver that already imported torch and saescope (tests/fuzz_util.py), so a start
costs milliseconds; the child runs the real CLI (`saescope train ...`) when it is registered, else train_sae.
"""
from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import fuzz_util as fu

train_mod = pytest.importorskip("saescope.train")
from safetensors.torch import load_file  # noqa: E402

TRIALS = 4
KILLS_PER_TRIAL = 3
CFG = dict(architecture="topk", d_sae=128, k=4, batch_size=64, total_tokens=64 * 120, lr=2e-3, log_every=5,
           checkpoint_every=6, dead_after_tokens=2000, plots=False, seed=3, device="cpu", init_sample_tokens=1024)


RESULT: dict = {}
LEFTOVERS: list[str] = []


def _cli_registered() -> bool:
    from saescope.cli import build_parser
    parser = build_parser()
    return any(getattr(a, "choices", None) and "train" in a.choices for a in parser._actions)  # noqa: SLF001


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("crash")
    g = np.random.default_rng(0)
    dirs = g.standard_normal((96, 32)).astype(np.float32)
    codes = (g.random((6000, 96)) < 0.04) * g.uniform(0.5, 3, (6000, 96))
    np.save(root / "acts.npy", (codes @ dirs + 0.1 * g.standard_normal((6000, 32))).astype(np.float32))
    cfg = train_mod.TrainConfig(**CFG)
    (root / "train.json").write_text(cfg.to_json())
    return root


def _start(setup: Path, out: Path, resume: bool, log: Path):
    ctx = fu.killable_context()
    if _cli_registered():
        argv = ["train", "--activations", str(setup / "acts.npy"), "--config", str(setup / "train.json"),
                "--out", str(out)] + (["--resume"] if resume else [])
        p = ctx.Process(target=fu.train_child, args=("cli", argv, str(log)))
    else:
        p = ctx.Process(target=fu.train_child,
                        args=("api", [str(setup / "acts.npy"), str(setup / "train.json"), str(out), resume], str(log)))
    p.start()
    return p


def _finished(out: Path) -> bool:
    return (out / "sae_weights.safetensors").exists()


def _check_no_torn_checkpoint(out: Path) -> int | None:
    """Every checkpoint file present loads; returns its step (None when there is none yet)."""
    step = None
    for path in sorted((out / "checkpoint").glob("*")) if (out / "checkpoint").exists() else []:
        if path.name.endswith(".tmp") or path.name.startswith("."):
            continue  # an unfinished temp file is not a checkpoint (its absence at the end is checked)
        if path.suffix == ".pt":
            state = torch.load(path, map_location="cpu", weights_only=True)  # raises if torn
            step = int(state["step"]) if isinstance(state, dict) and "step" in state else step
        elif path.suffix == ".json":
            json.loads(path.read_text())
    return step


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _logged_steps(out: Path) -> int:
    try:
        return (out / "metrics.jsonl").read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def _kill_when(p, out: Path, mode: str, rng: random.Random, deadline: float) -> str:
    """Wait for the chosen moment, then SIGKILL. Returns what happened."""
    ckpt_dir = out / "checkpoint"
    state = ckpt_dir / "state.pt"
    while time.time() < deadline and p.is_alive() and not (out / "metrics.jsonl").exists() and not ckpt_dir.exists():
        time.sleep(0.002)  # training has not started yet (loading, initialisation)
    if mode == "random":  # a random point of the remaining run, by progress (not wall time: machines differ)
        done = _logged_steps(out)
        left = CFG["total_tokens"] // CFG["batch_size"] // CFG["log_every"] - done
        target = done + rng.randrange(1, max(2, left // 2 + 1))
        while time.time() < deadline and p.is_alive() and _logged_steps(out) < target:
            time.sleep(0.001)
    elif mode == "during-write":
        skip = rng.randrange(0, 3)
        seen = 0
        while time.time() < deadline and p.is_alive():
            try:
                names = os.listdir(ckpt_dir)
            except FileNotFoundError:
                names = []
            if any(n.endswith(".tmp") or n.startswith(".") for n in names):
                if seen >= skip:
                    break
                seen += 1
                while time.time() < deadline and p.is_alive() and any(
                        n.endswith(".tmp") or n.startswith(".") for n in os.listdir(ckpt_dir)):
                    pass
    elif mode == "after-replace":
        last = state.stat().st_ino if state.exists() else None
        while time.time() < deadline and p.is_alive():
            try:
                ino = state.stat().st_ino
            except FileNotFoundError:
                continue
            if ino != last:
                break
    if not p.is_alive():
        return "finished-before-kill"
    p.kill()
    p.join(30)
    return f"killed ({mode})"


def test_sigkill_resume_bit_identical(setup, tmp_path):
    ref = tmp_path / "ref"
    p = _start(setup, ref, False, tmp_path / "ref.log")
    p.join(120)
    assert p.exitcode == 0, (tmp_path / "ref.log").read_text()[-3000:]
    ref_w = load_file(str(ref / "sae_weights.safetensors"))
    ref_rows = _metrics(ref)
    total_steps = CFG["total_tokens"] // CFG["batch_size"]
    assert [r["step"] for r in ref_rows] == list(range(CFG["log_every"], total_steps + 1, CFG["log_every"]))

    rng = random.Random(20261122)
    modes = ["random", "during-write", "after-replace"]
    kills, report = 0, []
    for trial in range(TRIALS):
        out = tmp_path / f"trial{trial}"
        log = tmp_path / f"trial{trial}.log"
        resume = False
        for attempt in range(KILLS_PER_TRIAL + 1):
            p = _start(setup, out, resume, log)
            if attempt < KILLS_PER_TRIAL:
                mode = modes[(trial + attempt) % len(modes)]
                what = _kill_when(p, out, mode, rng, time.time() + 60)
                report.append(f"trial {trial} attempt {attempt}: {what}")
                if what.startswith("killed"):
                    kills += 1
                    step = _check_no_torn_checkpoint(out)
                    report[-1] += f" at checkpoint step {step}"
            p.join(120)
            assert p.exitcode == 0 or p.exitcode == -9, f"exit {p.exitcode}: {log.read_text()[-3000:]}"
            if _finished(out):
                break
            resume = True
        assert _finished(out), f"trial {trial} did not finish: {log.read_text()[-2000:]}"
        got = load_file(str(out / "sae_weights.safetensors"))
        diffs = [k for k in ref_w if not torch.equal(ref_w[k], got[k])]
        assert not diffs, f"trial {trial}: weights differ from the uninterrupted run in {diffs}\n" + "\n".join(report)
        rows = _metrics(out)
        assert [r["step"] for r in rows] == [r["step"] for r in ref_rows], f"trial {trial}: metrics steps {[r['step'] for r in rows]}"
        assert [r.get("loss") for r in rows] == [r.get("loss") for r in ref_rows], f"trial {trial}: losses differ"
        LEFTOVERS.extend(f"trial{trial}/{q.relative_to(out)}" for q in out.rglob("*") if q.name.endswith(".tmp"))
    print("\n".join(report))
    print(f"{TRIALS} trials, {kills} SIGKILLs, 0 differences; temp files left: {LEFTOVERS}")
    RESULT["done"] = True
    assert kills >= TRIALS * 2, f"too few kills landed mid-run ({kills}); the run is too fast to test\n" + "\n".join(report)


def test_no_temp_files_left_after_kill_and_resume():
    """A kill during a checkpoint write leaves ``checkpoint/.state.pt.*.tmp``; a resumed, finished run should
    have removed it (it is litter the size of a full checkpoint, one per crash)."""
    if not RESULT.get("done"):
        pytest.skip("needs test_sigkill_resume_bit_identical to have run")
    assert not LEFTOVERS, LEFTOVERS
