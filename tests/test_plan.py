"""The memory planner (`saescope plan`, saescope.plan): shapes from configs alone, offline, checked against the
loaded models and the real GPT-2 small config; its estimates checked against the peak of live tensor memory
measured by PyTorch's profiler while the real code runs."""
from __future__ import annotations

import json

import pytest
import torch
from huggingface_hub import constants
from safetensors import safe_open
from torch.profiler import ProfilerActivity, profile

from gpt2_small import GPT2_SMALL_PARAMS, V5_128K_REPO, publish_gpt2_small_configs
from saescope.cli import main
from saescope.errors import CheckpointError, ConfigError, InputError
from saescope.plan import Budget, ModelShape, SAEShape, model_shape, pick_batch_size, plan, plan_task, sae_shape
from saescope.plan.memory import kv_cache_bytes, parse_memory
from saescope.sae import SAE, SAEConfig, SAEMetadata

pytestmark = pytest.mark.usefixtures("one_thread")
V5 = "gpt2-small-resid-post-v5-128k:blocks.8.hook_resid_post"
HUGE = Budget(1 << 50, 1 << 50, "cpu", "test")


@pytest.fixture()
def real_gpt2_cache(tmp_path, monkeypatch):
    """A hub cache of its own holding only GPT-2 small's real config.json and the v5 128k cfg.json files."""
    cache = tmp_path / "hub"
    publish_gpt2_small_configs(cache)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def peak_live_bytes(fn) -> int:
    """Peak of tensor memory allocated while ``fn`` runs, above what was live before (PyTorch's profiler)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    cur = peak = 0
    for e in events:
        cur += e.nbytes()
        peak = max(peak, cur)
    return peak


# ------------------------------------------------------------------------------------------------ shapes
@pytest.mark.compat
def test_gpt2_small_and_v5_128k_from_configs_alone(real_gpt2_cache):
    m = model_shape("gpt2")
    assert m.n_params == GPT2_SMALL_PARAMS                  # tied embeddings counted once
    assert (m.n_layers, m.d_model, m.n_heads, m.d_mlp, m.d_vocab, m.n_ctx) == (12, 768, 12, 3072, 50257, 1024)
    s = sae_shape(V5)
    assert (s.architecture, s.d_in, s.d_sae, s.k, s.hook_name) == ("topk", 768, 131072, 32, "blocks.8.hook_resid_post")
    assert not list(real_gpt2_cache.rglob("*.safetensors"))  # nothing but configs was there, or fetched


def test_10gb_card_answer(real_gpt2_cache):
    """The planner's answer for GPT-2 small + the 131k SAE on a 10 GB card, and its self-consistency."""
    report = plan("gpt2", V5, memory="10GB")
    assert report.budget.usable < 10 * 2**30
    for name, t in report.tasks.items():
        assert t.fits and 1 <= t.size <= t.largest, name
        assert t.total <= report.budget.usable, name
        bigger = plan_task(name, report.model, report.sae, report.budget, batch_tokens=(t.largest + 1) * t.context)
        assert not bigger.fits and bigger.total > report.budget.usable, name
    # training state: 16 bytes per SAE parameter (fp32 weights, grads, two Adam moments)
    assert report.tasks["train"].items["training state"] == 16 * report.sae.n_params
    small = plan("gpt2", V5, memory="3GB", tasks=("train",))
    assert not small.tasks["train"].fits and "weights alone" in small.tasks["train"].notes[0]


@pytest.mark.compat
@pytest.mark.parametrize("which", ["gpt2_dir", "pythia_dir"])
def test_parameter_count_matches_the_checkpoint(which, request):
    """Counted from config.json (meta device) = the tensors in the saved model.safetensors (tied once)."""
    folder = request.getfixturevalue(which)
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        saved = sum(f.get_slice(k).get_shape().numel() if hasattr(f.get_slice(k).get_shape(), "numel")
                    else _prod(f.get_slice(k).get_shape()) for k in f.keys())
    assert model_shape(str(folder)).n_params == saved


def _prod(shape) -> int:
    out = 1
    for d in shape:
        out *= d
    return out


def test_shape_agrees_with_the_loaded_model(gpt2_dir):
    from saescope.lm import LanguageModel

    lm = LanguageModel.from_pretrained(str(gpt2_dir), device="cpu")
    a, b = model_shape(str(gpt2_dir)), ModelShape.from_lm(lm)
    assert (a.n_params, a.n_layers, a.d_model, a.d_mlp, a.d_vocab, a.n_ctx, a.n_kv_heads) == \
           (b.n_params, b.n_layers, b.d_model, b.d_mlp, b.d_vocab, b.n_ctx, b.n_kv_heads)


@pytest.mark.compat
def test_kv_cache_equals_transformers_cache(gpt2_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(gpt2_dir).eval()
    ids = torch.randint(0, 4096, (3, 40))
    with torch.no_grad():
        cache = model(ids, use_cache=True).past_key_values
    layers = getattr(cache, "layers", None)
    tensors = [t for layer in layers for t in (layer.keys, layer.values)] if layers else \
              [t for kv in cache for t in kv]
    held = sum(t.numel() * t.element_size() for t in tensors)
    assert kv_cache_bytes(model_shape(str(gpt2_dir)), 3, 40, 4) == held


# ------------------------------------------------------------------------------------------------ estimates
def _sae(d_sae=8192, arch="topk"):
    cfg = SAEConfig(arch, d_in=64, d_sae=d_sae, k=32 if arch == "topk" else None,
                    metadata=SAEMetadata(hook_name="blocks.6.hook_resid_pre"))
    return SAE(cfg, seed=0)


def _features(lm, sae, ids):
    """Feature activations [b, pos, d_sae] as the statistics pass computes them (through the attach layer)."""
    try:
        from saescope.site import attach
    except ImportError:   # before the attach layer
        from saescope.report.stats import sae_activations
        return sae_activations(lm, sae, ids)
    return attach(lm, sae).features(ids)


@pytest.mark.parametrize("task", ["read", "stats", "eval", "steer"])
def test_estimate_bounds_the_measured_peak(task, gpt2_dir):
    """Planned activations (weights already loaded) >= the measured peak of live tensors, and not 2.5x above it."""
    from saescope.evals import evaluate_sae
    from saescope.lm import LanguageModel
    from saescope.report.stats import StatsAccumulator, StatsConfig

    lm = LanguageModel.from_pretrained(str(gpt2_dir), device="cpu")
    sae = _sae()
    B, T = 4, 128
    ids = torch.randint(1, 4096, (B, T), generator=torch.Generator().manual_seed(0))
    vec = sae.feature_directions([3])[0]

    def run():
        with torch.no_grad():
            if task == "read":
                _features(lm, sae, ids)
            elif task == "stats":
                acc = StatsAccumulator(sae.d_sae, StatsConfig())
                acc.update(ids, _features(lm, sae, ids), torch.ones(B, T, dtype=torch.bool))
            elif task == "eval":
                evaluate_sae(lm, sae, ids, tokens=B * T, batch_size=B, context_size=T)
            else:
                with lm.intervene({"blocks.6.hook_resid_pre": lambda a: sae.decode(sae.encode(a)) + vec}):
                    lm.generate(ids[:, : T - 8], max_new_tokens=8)   # the plan's case: the prompt fills the context

    run()   # warm-up: one-off allocations are not part of the plan
    measured = peak_live_bytes(run)
    planned = plan_task(task, ModelShape.from_lm(lm), SAEShape.from_sae(sae), HUGE, context=T,
                        batch_tokens=B * T, resident=False).total
    assert measured <= planned, (task, measured, planned)
    assert planned <= 2.5 * measured, (task, measured, planned)


def test_train_estimate_bounds_the_measured_peak():
    from saescope.train import TrainConfig
    from saescope.train.losses import TrainableSAE
    from saescope.train.monitor import adam as _adam

    d_in, d_sae, B = 64, 16384, 1024
    x = torch.randn(B, d_in, generator=torch.Generator().manual_seed(0))
    cfg = TrainConfig(architecture="topk", d_sae=d_sae, k=32, batch_size=B)

    def run():
        model = TrainableSAE(cfg, d_in, torch.Generator().manual_seed(0))
        opt = _adam(list(model.parameters()), cfg, torch.device("cpu"))
        dead = torch.zeros(d_sae, dtype=torch.bool)
        dead[:100] = True                                   # AuxK runs
        for _ in range(2):                                  # the second step holds the first step's gradients
            out = model.loss(x, dead)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(list(model.parameters()), 1.0)
            opt.step()

    measured = peak_live_bytes(run)
    shape = SAEShape("random", "topk", d_in, d_sae, 32)
    planned = plan_task("train", None, shape, HUGE, batch_tokens=B, with_model=False).total
    assert measured <= planned <= 1.5 * measured, (measured, planned)


# ------------------------------------------------------------------------------------------------ API, CLI, errors
def test_pick_batch_size_for_loaded_objects(gpt2_dir):
    from saescope.lm import LanguageModel

    lm = LanguageModel.from_pretrained(str(gpt2_dir), device="cpu")
    sae = _sae(d_sae=65536)
    n = pick_batch_size("stats", lm, sae, context_size=128, memory="4GB", cap=1 << 20)
    m, s = ModelShape.from_lm(lm), SAEShape.from_sae(sae)
    fits = plan_task("stats", m, s, Budget(4 << 30, int(4 * 2**30 * 0.9), "cpu", "t"), context=128,
                     batch_tokens=n * 128)
    assert fits.fits and fits.total <= 0.9 * (4 << 30)
    with pytest.raises(InputError, match="one sequence of 128 tokens needs"):
        pick_batch_size("stats", lm, sae, context_size=128, memory="64MB")


@pytest.mark.compat
def test_cli_json_and_exit_codes(real_gpt2_cache, capsys):
    assert main(["plan", "--model", "gpt2", "--sae", V5, "--device-memory", "10GB", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["sae"]["d_sae"] == 131072 and set(out["tasks"]) == {"read", "steer", "train", "stats", "eval"}
    assert all(t["fits"] for t in out["tasks"].values())
    assert main(["plan", "--model", "gpt2", "--sae", V5, "--device-memory", "2GB", "--task", "train"]) == 1
    assert "DOES NOT FIT" in capsys.readouterr().out


@pytest.mark.parametrize("argv, match", [
    (["--device-memory", "banana"], "--device-memory: cannot read 'banana'"),
    (["--device-memory", "10"], "cannot read '10' as a memory size"),
    (["--sae", "gpt2-small-resid-post-v5-128k:blocks.99.hook_resid_post"], "has no SAE"),
    (["--sae", "gpt2-small-hook-z-kk:blocks.5.hook_z"], "pass --d-in and --d-sae"),
    (["--sae", V5, "--d-in", "512"], "does not match the width 768"),
])
def test_bad_input_is_one_line(real_gpt2_cache, capsys, argv, match):
    args = ["plan", "--model", "gpt2", "--sae", V5, *argv] if "--sae" not in argv else ["plan", "--model", "gpt2", *argv]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and match in err, err


def test_errors_name_the_value(real_gpt2_cache, tmp_path):
    assert parse_memory("10GB") == parse_memory("10GiB") == 10 * 2**30
    assert parse_memory("512 MB") == 512 * 2**20
    with pytest.raises(InputError, match="out of range"):
        parse_memory("2000000TB")
    bad = tmp_path / "sae"
    bad.mkdir()
    (bad / "cfg.json").write_text(json.dumps({"architecture": "standard", "d_in": 768, "d_sae": 1e300,
                                              "sae_lens_version": "6.0.0"}))
    with pytest.raises((CheckpointError, ConfigError)):
        sae_shape(str(bad))
    with pytest.raises(CheckpointError, match="offline|not in the local"):
        sae_shape("gpt2-small-resid-post-v5-32k:blocks.8.hook_resid_post")   # its cfg.json is not cached
    assert V5_128K_REPO.startswith("jbloom/")


def test_fitting_batch_size_only_shrinks_on_a_gpu(monkeypatch):
    """Statistics and evals ask the planner for their batch on a GPU; on the CPU the asked size stays (so results
    that depend on batching never depend on the free memory)."""
    from types import SimpleNamespace

    import torch

    from saescope.plan import memory

    calls = []

    def fake_pick(task, lm, sae, context_size, cap=None, **kw):
        calls.append((task, context_size, cap))
        return 3

    monkeypatch.setattr(memory, "pick_batch_size", fake_pick)
    cpu = SimpleNamespace(lm=None, sae=SimpleNamespace(device=torch.device("cpu")))
    gpu = SimpleNamespace(lm=None, sae=SimpleNamespace(device=torch.device("cuda", 0)))
    assert memory.fitting_batch_size("stats", cpu, 128, 32) == 32 and not calls
    assert memory.fitting_batch_size("eval", gpu, 128, 8) == 3 and calls == [("eval", 128, 8)]
