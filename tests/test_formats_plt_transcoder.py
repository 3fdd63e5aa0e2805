"""Per-layer transcoders in the circuit-tracer layout (mwhanna_transcoder family): equal SAELens for the
published ReLU layout, and circuit-tracer's own loader for the JumpReLU + skip variant of the same layout."""
from __future__ import annotations

import pytest
import torch
import yaml

from formats_ref import add_repo, compare, randn, rel_err, report, saelens_ref, st_bytes
from saescope.errors import CheckpointError
from saescope.sae import SAE

D, D_SAE = 40, 144


def _layer(g, threshold=False, skip=False) -> dict:
    t = {"W_enc": randn(g, D_SAE, D, scale=0.3), "W_dec": randn(g, D_SAE, D, scale=0.2),
         "b_enc": randn(g, D_SAE, scale=0.2), "b_dec": randn(g, D, scale=0.1)}
    if threshold:
        t["activation_function.threshold"] = torch.rand(D_SAE, generator=g) * 0.4
    if skip:
        t["W_skip"] = randn(g, D, D, scale=0.1)
    return t


def _wandb() -> bytes:
    return yaml.safe_dump({"d_model": {"value": D}, "d_feature": {"value": D_SAE}, "batch_size": {"value": 4096}}).encode()


@pytest.fixture(scope="module")
def cache(hub_cache):
    pytest.importorskip("sae_lens")
    g = torch.Generator().manual_seed(37)
    add_repo(hub_cache, "mwhanna/qwen3-4b-transcoders", {
        "layer_2.safetensors": st_bytes(_layer(g)), "wandb-config.yaml": _wandb(),
        "config.yaml": yaml.safe_dump({"model_name": "Qwen/Qwen3-4B", "feature_input_hook": "mlp.hook_in",
                                       "feature_output_hook": "mlp.hook_out"}).encode()})
    add_repo(hub_cache, "mwhanna/qwen3-14b-transcoders", {"layer_9.safetensors": st_bytes(_layer(g)),
                                                          "wanb-config.yaml": _wandb()})   # the misspelt name
    return hub_cache


@pytest.mark.parametrize("release,sae_id,model", [("mwhanna-qwen3-4b-transcoders", "layer_2", "Qwen/Qwen3-4B"),
                                                  ("mwhanna-qwen3-14b-transcoders", "layer_9", "Qwen/Qwen3-14B")])
def test_equals_saelens(cache, monkeypatch, release, sae_id, model):
    ours = SAE.from_pretrained(release, sae_id)
    layer = sae_id.split("_")[1]
    m = ours.cfg.metadata
    assert ours.is_transcoder and ours.cfg.architecture == "relu" and not ours.cfg.skip
    assert (m.hook_name, m.hook_name_out, m.model_name) == (f"blocks.{layer}.mlp.hook_in",
                                                            f"blocks.{layer}.hook_mlp_out", model)
    ref = saelens_ref(release, sae_id, monkeypatch)
    report("plt_transcoder", compare(ours, ref, randn(torch.Generator().manual_seed(1), 2, 7, D)))


def test_jumprelu_skip_variant_equals_circuit_tracer(tmp_path):
    pytest.importorskip("circuit_tracer")
    from circuit_tracer.transcoder.single_layer_transcoder import load_relu_transcoder

    g = torch.Generator().manual_seed(41)
    (tmp_path / "wandb-config.yaml").write_bytes(_wandb())
    path = tmp_path / "layer_3.safetensors"
    path.write_bytes(st_bytes(_layer(g, threshold=True, skip=True)))
    from saescope.sae.formats import load_sae

    ours = load_sae(path, fmt="plt_transcoder")
    assert ours.cfg.architecture == "jumprelu" and ours.cfg.skip
    ref = load_relu_transcoder(str(path), 3, device=torch.device("cpu"), dtype=torch.float32,
                               lazy_encoder=False, lazy_decoder=False)
    x = randn(torch.Generator().manual_seed(2), 2, 7, D)
    with torch.no_grad():
        f, f_ref = ours.encode(x), ref.encode(x)
        assert 0.05 < float((f_ref > 0).float().mean()) < 0.95
        err = max(rel_err(f, f_ref), rel_err(ours(x), ref(x)))
    assert err < 1e-5
    report("plt_transcoder (JumpReLU + W_skip)", err, peer="circuit-tracer 0.5.0")


def test_negative_threshold_refused(tmp_path):
    from saescope.sae.formats import load_sae

    g = torch.Generator().manual_seed(43)
    (tmp_path / "wandb-config.yaml").write_bytes(_wandb())
    t = _layer(g, threshold=True)
    t["activation_function.threshold"][0] = -0.1
    (tmp_path / "layer_1.safetensors").write_bytes(st_bytes(t))
    with pytest.raises(CheckpointError, match="negative JumpReLU thresholds"):
        load_sae(tmp_path / "layer_1.safetensors", fmt="plt_transcoder")
