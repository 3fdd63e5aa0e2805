"""One layer of a cross-layer transcoder (mntss_clt_layer_transcoder family), loaded exactly as a transcoder whose
output concatenates its contributions to every later layer. Features equal SAELens and circuit-tracer; the sum of
the contributions equals SAELens's summed decoder; re-assembling all layers equals circuit-tracer's CLT
reconstruction of every layer's MLP output."""
from __future__ import annotations

import pytest
import torch
import yaml

from formats_ref import add_repo, randn, rel_err, report, saelens_ref, st_bytes
from saescope.sae import SAE

D, D_SAE, N_LAYERS = 32, 96, 3
REL = "mntss-gemma-2-2b-2.5m-clt-as-per-layer"


def _files(g, threshold=False) -> dict:
    files = {"config.yaml": yaml.safe_dump({"model_name": "google/gemma-2-2b", "feature_input_hook": "hook_resid_mid",
                                            "feature_output_hook": "hook_mlp_out"}).encode()}
    for i in range(N_LAYERS):
        enc = {f"W_enc_{i}": randn(g, D_SAE, D, scale=0.3), f"b_enc_{i}": randn(g, D_SAE, scale=0.2),
               f"b_dec_{i}": randn(g, D, scale=0.1)}
        if threshold:
            enc[f"threshold_{i}"] = torch.rand(D_SAE, generator=g) * 0.4
        files[f"W_enc_{i}.safetensors"] = st_bytes(enc)
        files[f"W_dec_{i}.safetensors"] = st_bytes({f"W_dec_{i}": randn(g, D_SAE, N_LAYERS - i, D, scale=0.2)})
    return files


@pytest.fixture(scope="module")
def snapshot(hub_cache):
    pytest.importorskip("sae_lens")
    return add_repo(hub_cache, "mntss/clt-gemma-2-2b-2.5M", _files(torch.Generator().manual_seed(47)))


def _layers():
    return [SAE.from_pretrained(REL, f"layer_{i}") for i in range(N_LAYERS)]


def test_layer_metadata(snapshot):
    sae = SAE.from_pretrained(REL, "layer_1")
    m = sae.cfg.metadata
    assert sae.is_transcoder and sae.d_out == (N_LAYERS - 1) * D and sae.cfg.architecture == "relu"
    assert (m.hook_name, m.hook_name_out, m.model_name) == ("blocks.1.hook_resid_mid", "blocks.1.hook_mlp_out",
                                                            "google/gemma-2-2b")
    assert m.extra["clt"]["target_hooks"] == ["blocks.1.hook_mlp_out", "blocks.2.hook_mlp_out"]


def test_equals_saelens_encode_and_summed_decoder(snapshot, monkeypatch):
    x = randn(torch.Generator().manual_seed(1), 2, 7, D)
    errs = []
    for i, ours in enumerate(_layers()):
        ref = saelens_ref(REL, f"layer_{i}", monkeypatch)
        with torch.no_grad():
            f, f_ref = ours.encode(x), ref.encode(x)
            assert 0.05 < float((f_ref > 0).float().mean()) < 0.95
            summed = ours(x).unflatten(-1, (N_LAYERS - i, D)).sum(-2)
            errs += [rel_err(f, f_ref), rel_err(summed, ref(x))]
    assert max(errs) < 1e-5, errs
    report("clt_layer (features, summed decoder)", max(errs))


def _reassemble(saes, x_all):
    """Each layer's MLP-output reconstruction: the sum of every source layer's contribution to it."""
    out = torch.zeros_like(x_all)
    for src, sae in enumerate(saes):
        y = sae(x_all[src]).unflatten(-1, (N_LAYERS - src, D))
        for j in range(N_LAYERS - src):
            out[src + j] += y[..., j, :]
    return out


@pytest.mark.parametrize("threshold", [False, True], ids=["relu", "jumprelu"])
def test_reconstruction_equals_circuit_tracer(snapshot, tmp_path, threshold):
    pytest.importorskip("circuit_tracer")
    from circuit_tracer.transcoder.cross_layer_transcoder import load_clt

    from saescope.sae.formats import load_sae

    if threshold:   # the same layout with JumpReLU thresholds, read from a local folder
        for name, data in _files(torch.Generator().manual_seed(53), threshold=True).items():
            (tmp_path / name).write_bytes(data)
        root = tmp_path
        saes = [load_sae(root / f"W_enc_{i}.safetensors", fmt="clt_layer") for i in range(N_LAYERS)]
        assert all(s.cfg.architecture == "jumprelu" for s in saes)
    else:
        root, saes = snapshot, _layers()
    clt = load_clt(str(root), device=torch.device("cpu"), dtype=torch.float32, lazy_decoder=False, lazy_encoder=False)
    x_all = randn(torch.Generator().manual_seed(3), N_LAYERS, 9, D)
    with torch.no_grad():
        feats = clt.encode(x_all)
        recon = clt.decode(feats)
        f_err = max(rel_err(s.encode(x_all[i]), feats[i]) for i, s in enumerate(saes))
        r_err = rel_err(_reassemble(saes, x_all), recon)
    assert max(f_err, r_err) < 1e-5, (f_err, r_err)
    report(f"clt_layer ({'jumprelu' if threshold else 'relu'}; features, all-layer reconstruction)",
           max(f_err, r_err), peer="circuit-tracer 0.5.0")
