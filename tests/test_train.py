"""saescope.train: sparse-path gradients vs dense autograd, every architecture, normalisation folding, bad input,
checkpoint/resume after SIGKILL, and 2-process DDP vs 1 process."""
from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from saescope.errors import ConfigError, InputError, NumericsError
from saescope.train import TrainConfig, train_sae
from saescope.train.losses import TrainableSAE, geometric_median
from saescope.train.sparse import topk_pattern

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny matrices: threads only add contention

ROOT = Path(__file__).resolve().parents[1]


def synthetic(n=8192, d=32, m=96, k=4, seed=0, offset=3.0, scale=5.0):
    """Sparse superposition: x = offset + scale * sum of k of m unit directions with magnitudes in [0.5, 3.5]."""
    g = torch.Generator().manual_seed(seed)
    D = torch.randn(m, d, generator=g)
    D /= D.norm(dim=1, keepdim=True)
    idx = torch.rand(n, m, generator=g).argsort(1)[:, :k]
    vals = torch.rand(n, k, generator=g) * 3 + 0.5
    codes = torch.zeros(n, m).scatter(1, idx, vals)
    return offset + scale * codes @ D


def ev(x, x_hat):
    return float(1 - (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


# ---------------------------------------------------------------------------------------------------------
# the sparse fast path
def _dense_topk_loss(model: TrainableSAE, x, dead, batch_topk=False):
    """Independent dense reference: full pre-activations, mask, dense decode, AuxK with dense masks."""
    cfg = model.cfg
    x_in = x - model.b_dec
    pre = x_in @ model.W_enc_T.t() + model.b_enc
    if batch_topk:
        flat = pre.reshape(-1)
        _, i = flat.topk(cfg.k * x.shape[0])
        mask = torch.zeros_like(flat, dtype=torch.bool).scatter(0, i, True).view_as(pre)
    else:
        _, i = pre.topk(cfg.k, dim=-1)
        mask = torch.zeros_like(pre, dtype=torch.bool).scatter(1, i, True)
    f = torch.where(mask, torch.relu(pre), torch.zeros_like(pre))
    x_hat = f @ model.W_dec + model.b_dec
    loss = (x_hat - x).pow(2).sum(-1).mean()
    n_dead = int(dead.sum())
    k_aux = min(cfg.aux_k, n_dead)
    pre_dead = torch.where(dead, pre, torch.full_like(pre, -math.inf))
    _, ia = pre_dead.topk(k_aux, dim=-1)
    amask = torch.zeros_like(pre, dtype=torch.bool).scatter(1, ia, True)
    fa = torch.where(amask, torch.relu(pre), torch.zeros_like(pre))
    e_hat = fa @ model.W_dec
    aux = (e_hat - (x - x_hat).detach()).pow(2).sum(-1).mean()
    return loss + cfg.aux_coefficient * min(n_dead / cfg.aux_k, 1.0) * aux


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_sparse_gradients_equal_dense_autograd(arch):
    torch.manual_seed(0)
    d, S, B = 24, 80, 48
    cfg = TrainConfig(architecture=arch, d_sae=S, k=5, aux_k=7, aux_coefficient=0.5)
    model = TrainableSAE(cfg, d, torch.Generator().manual_seed(1)).double()
    with torch.no_grad():  # generic (non-tied, non-zero-bias) parameters
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(B, d, dtype=torch.float64) * 2
    dead = torch.zeros(S, dtype=torch.bool)
    dead[::3] = True
    params = [model.W_enc_T, model.b_enc, model.W_dec, model.b_dec]
    sparse = torch.autograd.grad(model.loss(x, dead).loss, params)
    dense = torch.autograd.grad(_dense_topk_loss(model, x, dead, batch_topk=arch == "batchtopk"), params)
    for name, a, b in zip(["W_enc", "b_enc", "W_dec", "b_dec"], sparse, dense):
        rel = float((a - b).norm() / b.norm())
        assert rel <= 1e-5, (name, rel)
        assert b.norm() > 0


def test_sparse_pattern_ops_float32_large_k():
    """float32 path of the primitives (as used in training) against dense products."""
    torch.manual_seed(1)
    B, S, d, k = 64, 300, 40, 16
    pre = torch.randn(B, S)
    W = torch.randn(S, d)
    g = torch.randn(B, d)
    pattern, vals = topk_pattern(pre, k)
    A = torch.zeros(B, S)
    A[pattern.rows, pattern.cols] = vals
    torch.testing.assert_close(pattern.bag(W, vals), A @ W, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pattern.sampled(g, W), (g @ W.t())[pattern.rows, pattern.cols], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pattern.t_matmul(vals, g), A.t() @ g, rtol=1e-5, atol=1e-4)


def test_geometric_median_beats_mean_under_outliers():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 3, generator=g)
    x[:40] += 100.0  # 8% gross outliers
    gm = geometric_median(x)
    assert gm.norm() < 1.0 < x.mean(0).norm()
    # Weiszfeld fixed point: the unit vectors to the points sum to ~0
    u = (x - gm) / (x - gm).norm(dim=1, keepdim=True)
    assert u.sum(0).norm() / len(x) < 1e-3


# ---------------------------------------------------------------------------------------------------------
def test_config_json_round_trip_and_errors(tmp_path):
    cfg = TrainConfig(architecture="relu", d_sae=128, l1_coefficient=3.0, extra={"note": "x"})
    assert TrainConfig.from_json(cfg.to_json()) == cfg
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"architecture": "jumprelu", "k": 8}))
    assert TrainConfig.from_file(f).architecture == "jumprelu"
    f.write_text(json.dumps({"archtecture": "topk"}))
    with pytest.raises(ConfigError, match="archtecture"):
        TrainConfig.from_file(f)
    with pytest.raises(ConfigError, match="architecture"):
        TrainConfig(architecture="vanilla")
    with pytest.raises(ConfigError, match="batch_size"):
        TrainConfig(batch_size=0)


SMALL = dict(d_sae=96, k=4, batch_size=256, total_tokens=256 * 200, lr=3e-3, log_every=50,
             dead_after_tokens=20_000, plots=False)


@pytest.fixture(scope="module")
def data():
    return synthetic()


def test_topk_trains_and_saves_raw_space_sae(data, tmp_path):
    from saescope.sae import SAE

    out = tmp_path / "run"
    sae = train_sae(data, TrainConfig(architecture="topk", **{**SMALL, "plots": True}), out_dir=out)
    # raw-space SAE: the normalisation scale is folded in, so it reconstructs the raw activations directly
    with torch.no_grad():
        x_hat = sae(data)
        assert (sae.encode(data) > 0).sum(-1).float().max() <= 4
    assert ev(data, x_hat) > 0.85
    for name in ("cfg.json", "sae_weights.safetensors", "sparsity.safetensors", "metrics.jsonl",
                 "training_curves.png", "feature_density.png"):
        assert (out / name).exists(), name
    loaded = SAE.load(out)
    torch.testing.assert_close(loaded.W_enc, sae.W_enc)
    torch.testing.assert_close(loaded(data[:64]), x_hat[:64])
    meta = loaded.cfg.metadata.extra["training"]
    assert meta["tokens"] == 200 * 256 and meta["seed"] == 0 and meta["saescope_version"]
    assert meta["input_scale_folded"] == pytest.approx(math.sqrt(32) / float(data[:8192].norm(dim=1).mean()), rel=1e-4)
    assert loaded.log_sparsity is not None and loaded.log_sparsity.shape == (96,)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(50, 201, 50))
    assert 0 <= rows[-1]["dead_fraction"] <= 0.1 and rows[-1]["l0"] <= 4
    # the logged EV is the batch EV in normalised space; it must agree with the raw-space EV roughly
    assert abs(rows[-1]["explained_variance"] - ev(data, x_hat)) < 0.05


@pytest.mark.parametrize("arch,kw,min_ev", [
    ("relu", dict(l1_coefficient=0.5, target_l0=0), 0.8),            # fixed coefficients (target_l0 = 0);
    ("batchtopk", {}, 0.8),                                          # the target-L0 controller is tested in
    ("jumprelu", dict(l0_coefficient=0.05, lr=5e-3, target_l0=0), 0.9),  # test_train_sparsity.py
    ("gated", dict(l1_coefficient=5.0, total_tokens=256 * 300, target_l0=0), 0.75),
])
def test_other_architectures_train_and_load(data, tmp_path, arch, kw, min_ev):
    from saescope.sae import SAE

    cfg = TrainConfig(architecture=arch, **{**SMALL, **kw})
    sae = train_sae(data, cfg, out_dir=tmp_path / arch)
    loaded = SAE.load(tmp_path / arch)
    with torch.no_grad():
        x_hat = loaded(data)
        l0 = (loaded.encode(data) > 0).sum(-1).float().mean()
    assert ev(data, x_hat) > min_ev
    assert l0 < 96 * 0.4  # actually sparse (the data has 4 active directions of 96)
    if arch == "batchtopk":  # exported for inference as JumpReLU with the estimated threshold
        assert loaded.cfg.architecture == "jumprelu"
        thr = loaded.cfg.metadata.extra["training"]["batchtopk_threshold"]
        assert thr > 0 and torch.allclose(loaded.threshold, torch.full((96,), thr))
        assert 2 <= float(l0) <= 8  # close to the training k = 4
    torch.testing.assert_close(sae.W_dec, loaded.W_dec)


def test_nonfinite_rows_are_skipped_and_reported(data, tmp_path):
    x = data.clone()
    x[100:110, 3] = float("nan")
    x[500, 0] = float("inf")
    sae = train_sae(x, TrainConfig(architecture="topk", **{**SMALL, "total_tokens": 256 * 40}))
    skipped = sae.cfg.metadata.extra["training"]["nonfinite_rows_skipped"]
    assert skipped >= 11  # every bad row is met at least once in 40 * 256 > 8192 rows
    assert torch.isfinite(sae.W_enc).all()
    with pytest.raises(NumericsError, match="NaN"):
        train_sae(torch.full((512, 8), float("nan")), TrainConfig(architecture="topk", d_sae=16, k=2, batch_size=64,
                                                                   total_tokens=640, plots=False))


def test_output_directory_errors(data, tmp_path):
    cfg = TrainConfig(architecture="topk", **{**SMALL, "total_tokens": 256 * 4})
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not empty"):
        train_sae(data, cfg, out_dir=other)
    assert (other / "notes.txt").read_text() == "mine"
    run = tmp_path / "run"
    train_sae(data, cfg, out_dir=run)
    with pytest.raises(InputError, match="--resume"):
        train_sae(data, cfg, out_dir=run)
    with pytest.raises(ConfigError, match="different k"):
        train_sae(data, cfg.replace(k=8), out_dir=run, resume=True)
    # resuming a finished run returns the saved SAE
    again = train_sae(data, cfg, out_dir=run, resume=True)
    assert again.W_enc.shape == (32, 96)


def test_activation_files_as_source(data, tmp_path):
    import numpy as np
    from safetensors.torch import save_file

    cfg = TrainConfig(architecture="topk", **{**SMALL, "total_tokens": 256 * 20})
    np.save(tmp_path / "a.npy", data.numpy())
    save_file({"activations": data}, str(tmp_path / "a.safetensors"))
    a = train_sae(str(tmp_path / "a.npy"), cfg)
    b = train_sae(tmp_path / "a.safetensors", cfg)
    c = train_sae(data, cfg)
    torch.testing.assert_close(a.W_dec, c.W_dec)
    torch.testing.assert_close(b.W_dec, c.W_dec)
    with pytest.raises(InputError, match="no such"):
        train_sae(tmp_path / "missing.npy", cfg)


# ---------------------------------------------------------------------------------------------------------
# exact resume after SIGKILL
RUN_SCRIPT = textwrap.dedent("""
    import sys, time, torch
    torch.set_num_threads(1)
    sys.path.insert(0, {tests!r})
    from test_train import synthetic
    from saescope.train import TrainConfig, train_sae
    from test_train import RESUME_CFG as CFG
    out, resume, delay = sys.argv[1], sys.argv[2] == "1", float(sys.argv[3])
    train_sae(synthetic(n=3000), CFG, out_dir=out, resume=resume, callback=lambda s, m: time.sleep(delay))
""")
RESUME_CFG = TrainConfig(architecture="topk", d_sae=64, k=4, batch_size=128, total_tokens=128 * 80, lr=3e-3,
                         log_every=5, checkpoint_every=10, dead_after_tokens=2000, plots=False)


def _run(script, *args, timeout=120):
    env = {**os.environ, "SAESCOPE_NO_PROGRESS": "1"}
    return subprocess.Popen([sys.executable, "-c", script, *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_resume_after_sigkill_is_exact(tmp_path):
    from safetensors.torch import load_file

    script = RUN_SCRIPT.format(tests=str(ROOT / "tests"))
    ref_dir, cut_dir = tmp_path / "ref", tmp_path / "cut"
    victim = _run(script, cut_dir, 0, 0.05)
    train_sae(synthetic(n=3000), RESUME_CFG, out_dir=ref_dir)  # the uninterrupted reference, in this process
    state = cut_dir / "checkpoint" / "state.pt"
    deadline = time.time() + 90
    while time.time() < deadline and not state.exists():
        time.sleep(0.05)
    time.sleep(0.3)  # a few more steps past the checkpoint: they are lost and must be replayed
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    assert not (cut_dir / "cfg.json").exists(), "the run finished before it was killed"
    killed_at = torch.load(state, weights_only=True)["step"]
    assert 0 < killed_at < 80
    resumed = _run(script, cut_dir, 1, 0)
    assert resumed.wait(timeout=120) == 0, resumed.stderr.read().decode()[-2000:]
    a = load_file(str(ref_dir / "sae_weights.safetensors"))
    b = load_file(str(cut_dir / "sae_weights.safetensors"))
    for name in a:
        assert float((a[name] - b[name]).abs().max()) <= 1e-6, name
    steps = [json.loads(line)["step"] for line in (cut_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(5, 81, 5))  # no duplicated or missing rows
    ref_rows = (ref_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["loss"] for r in ref_rows] == pytest.approx(
        [json.loads(r)["loss"] for r in (cut_dir / "metrics.jsonl").read_text().splitlines()], rel=1e-5)


# ---------------------------------------------------------------------------------------------------------
# DDP: 2 processes (gloo) == 1 process with the same global batch
DDP_SCRIPT = textwrap.dedent("""
    import os, sys, torch
    torch.set_num_threads(1)
    sys.path.insert(0, {tests!r})
    from test_train import synthetic
    from saescope.train import TrainConfig, train_sae
    from test_train import DDP_CFG
    out = sys.argv[1]
    sae = train_sae(synthetic(n=3000), DDP_CFG, out_dir=out)
    if int(os.environ.get("RANK", "0")) == 0:
        torch.save({{k: v.detach() for k, v in sae.state_dict().items()}}, os.path.join(out, "final.pt"))
""")


DDP_CFG = TrainConfig(architecture="topk", d_sae=64, k=4, batch_size=128, total_tokens=128 * 40, lr=3e-3,
                      log_every=10, checkpoint_every=20, dead_after_tokens=1000, plots=False, device="cpu")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_match_one(tmp_path):
    script = DDP_SCRIPT.format(tests=str(ROOT / "tests"))
    port = _free_port()
    procs = []
    for rank in range(2):
        env = {**os.environ, "SAESCOPE_NO_PROGRESS": "1", "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        procs.append(subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "ddp")], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    single = train_sae(synthetic(n=3000), DDP_CFG)
    try:
        for p in procs:
            assert p.wait(timeout=150) == 0, p.stderr.read().decode()[-2000:]  # no hang at save/exit
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    a = torch.load(tmp_path / "ddp" / "final.pt", weights_only=True)
    b = {k: v.detach() for k, v in single.state_dict().items()}
    for name in b:
        diff = float((a[name] - b[name]).abs().max() / b[name].abs().max().clamp_min(1e-8))
        assert diff < 1e-3, (name, diff)
    assert json.loads((tmp_path / "ddp" / "cfg.json").read_text())


def test_failed_checkpoint_write_keeps_previous(data, tmp_path, monkeypatch):
    """A full disk while checkpointing: the error propagates, the previous checkpoint stays intact and loadable."""
    from saescope.train import checkpoint as ckpt

    cfg = TrainConfig(architecture="topk", **{**SMALL, "total_tokens": 256 * 20, "checkpoint_every": 5})
    real_save = torch.save
    calls = {"n": 0}

    def flaky_save(obj, f, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 2:  # the second checkpoint: write some bytes, then the disk is full
            f.write(b"partial")
            raise OSError(28, "No space left on device")
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", flaky_save)
    with pytest.raises(OSError, match="No space"):
        train_sae(data, cfg, out_dir=tmp_path / "run")
    state = ckpt.load_state(tmp_path / "run")
    assert state["step"] == 5
    assert not [p for p in (tmp_path / "run" / "checkpoint").iterdir() if p.name != "state.pt"]  # no temp left
    monkeypatch.setattr(torch, "save", real_save)
    resumed = train_sae(data, cfg, out_dir=tmp_path / "run", resume=True)
    straight = train_sae(data, cfg)
    torch.testing.assert_close(resumed.W_dec, straight.W_dec, rtol=0, atol=1e-6)


def test_relu_sparse_path_equals_dense_gradients():
    """Once few latents are active, ReLU+L1 switches to the sparse path; its gradients equal the dense path's."""
    torch.manual_seed(0)
    d, S, B = 16, 200, 40
    cfg = TrainConfig(architecture="relu", d_sae=S, l1_coefficient=3.0, decoder_init_norm=0.1)
    model = TrainableSAE(cfg, d, torch.Generator().manual_seed(2)).double()
    with torch.no_grad():
        model.b_enc.fill_(-0.9)  # few active latents: density below the switch-over
        model.W_dec.mul_(1 + torch.rand(S, 1, dtype=torch.float64))  # unequal decoder norms (L1 weighting)
    x = torch.randn(B, d, dtype=torch.float64) * 3
    params = [model.W_enc_T, model.b_enc, model.W_dec, model.b_dec]
    model._density = 1.0
    dense_out = model.loss(x, None, l1_scale=0.5)
    dense = torch.autograd.grad(dense_out.loss, params)
    assert 0 < model._density < model.SPARSE_RELU_DENSITY
    sparse_out = model.loss(x, None, l1_scale=0.5)
    sparse = torch.autograd.grad(sparse_out.loss, params)
    assert model._density < model.SPARSE_RELU_DENSITY  # the sparse path ran
    torch.testing.assert_close(sparse_out.loss, dense_out.loss)
    torch.testing.assert_close(sparse_out.fire_counts, dense_out.fire_counts)
    for a, b in zip(sparse, dense):
        assert float((a - b).norm() / b.norm()) <= 1e-10


def test_dead_latent_resampling_revives_latents(data):
    from saescope.train.losses import TrainableSAE

    cfg = TrainConfig(architecture="relu", d_sae=64, l1_coefficient=0.5)
    model = TrainableSAE(cfg, 32, torch.Generator().manual_seed(0))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = (data[:512] - data[:512].mean(0)) * 0.2
    with torch.no_grad():
        model.b_enc[:20] = -1e3  # 20 latents that can never fire
    out = model.loss(x, None)
    out.loss.backward()
    opt.step()
    dead = torch.zeros(64, dtype=torch.bool)
    dead[:20] = True
    assert int(out.fire_counts[:20].sum()) == 0
    assert model.resample(dead, x, out.x_hat, opt, torch.Generator().manual_seed(0)) == 20
    assert float(opt.state[model.W_dec]["exp_avg"][:20].abs().max()) == 0
    after = model.loss(x, None)
    assert int((after.fire_counts[:20] > 0).sum()) >= 15  # the resampled latents fire again
    torch.testing.assert_close(model.W_dec[:20].norm(dim=1), model.W_dec[20:].norm(dim=1).mean().expand(20))
