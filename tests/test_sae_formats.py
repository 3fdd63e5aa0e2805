"""Foreign checkpoint formats against their authors' published math (written out independently here),
and hostile or broken files."""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from saescope.errors import CheckpointError, SaescopeError
from saescope.sae import SAE, SAEConfig

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny matrices: threads only add contention

D_IN, D_SAE, K = 32, 128, 6


g = torch.Generator().manual_seed(1234)


def rnd(*shape, scale=0.3):
    return torch.randn(*shape, generator=g) * scale


def x_batch(*lead):
    return torch.randn(*lead, D_IN, generator=g) * 2 + 0.7


# ---- OpenAI sparse_autoencoder --------------------------------------------------------------------
def openai_reference(sd, x):
    """OpenAI's TopK autoencoder: LN -> subtract pre_bias -> encoder + latent_bias -> TopK -> ReLU -> decoder
    + pre_bias -> undo LN."""
    mu = x.mean(-1, keepdim=True)
    xc = x - mu
    std = xc.std(-1, keepdim=True)
    xn = xc / (std + 1e-5)
    pre = torch.nn.functional.linear(xn - sd["pre_bias"], sd["encoder.weight"], sd["latent_bias"])
    vals, idx = pre.topk(sd["activation_state_dict"]["k"], dim=-1)
    lat = torch.zeros_like(pre).scatter(-1, idx, torch.relu(vals))
    rec = torch.nn.functional.linear(lat, sd["decoder.weight"]) + sd["pre_bias"]
    return lat, rec * std + mu


def test_openai_topk_pt(tmp_path):
    sd = {"pre_bias": rnd(D_IN), "encoder.weight": rnd(D_SAE, D_IN), "latent_bias": rnd(D_SAE),
          "decoder.weight": rnd(D_IN, D_SAE), "stats_last_nonzero": torch.zeros(D_SAE, dtype=torch.long),
          "activation": "TopK", "activation_state_dict": {"k": K, "postact_fn": "ReLU"}}
    torch.save(sd, tmp_path / "v5_32k_layer_8.pt")
    sae = SAE.load(tmp_path / "v5_32k_layer_8.pt")
    assert sae.cfg.architecture == "topk" and sae.cfg.k == K and sae.cfg.input_transform == "layer_norm"
    x = x_batch(2, 5)
    lat_ref, rec_ref = openai_reference(sd, x)
    with torch.no_grad():
        assert torch.allclose(sae.encode(x), lat_ref, atol=1e-5)
        assert torch.allclose(sae(x), rec_ref, atol=1e-5)
        assert torch.allclose(sae.error(x), x - rec_ref, atol=1e-5)
    # and converted to native, still the same
    sae.save(tmp_path / "native")
    with torch.no_grad():
        assert torch.allclose(SAE.load(tmp_path / "native")(x), rec_ref, atol=1e-5)


def test_openai_relu_pt_has_no_layer_norm(tmp_path):
    sd = {"pre_bias": rnd(D_IN), "encoder.weight": rnd(D_SAE, D_IN), "latent_bias": rnd(D_SAE),
          "decoder.weight": rnd(D_IN, D_SAE), "activation": "ReLU"}
    torch.save(sd, tmp_path / "relu.pt")
    sae = SAE.load(tmp_path / "relu.pt")
    x = x_batch(4)
    lat = torch.relu((x - sd["pre_bias"]) @ sd["encoder.weight"].T + sd["latent_bias"])
    with torch.no_grad():
        assert torch.allclose(sae.encode(x), lat, atol=1e-5)
        assert torch.allclose(sae(x), lat @ sd["decoder.weight"].T + sd["pre_bias"], atol=1e-5)


# ---- EleutherAI sparsify --------------------------------------------------------------------------
def test_sparsify_folder(tmp_path):
    folder = tmp_path / "layers.3"
    folder.mkdir()
    enc_w, enc_b, W_dec, b_dec = rnd(D_SAE, D_IN), rnd(D_SAE), rnd(D_SAE, D_IN), rnd(D_IN)
    save_file({"encoder.weight": enc_w, "encoder.bias": enc_b, "W_dec": W_dec, "b_dec": b_dec}, folder / "sae.safetensors")
    (folder / "cfg.json").write_text(json.dumps({"expansion_factor": 4, "normalize_decoder": True, "num_latents": 0,
                                                 "k": K, "multi_topk": False, "skip_connection": False, "d_in": D_IN}))
    (tmp_path / "config.json").write_text(json.dumps({"model": "EleutherAI/pythia-70m"}))
    sae = SAE.load(folder)
    assert sae.cfg.metadata.hook_name == "blocks.3.hook_resid_post"
    assert sae.cfg.metadata.model_name == "EleutherAI/pythia-70m"
    x = x_batch(3, 4)
    # sparsify: relu(encoder(x - b_dec)), top-k, then sum of the chosen decoder rows + b_dec
    acts = torch.relu((x - b_dec) @ enc_w.T + enc_b)
    top_acts, top_idx = acts.topk(K, dim=-1)
    rec = (top_acts[..., None] * W_dec[top_idx]).sum(-2) + b_dec
    with torch.no_grad():
        assert torch.allclose(sae(x), rec, atol=1e-5)
        dense = torch.zeros_like(acts).scatter(-1, top_idx, top_acts)
        assert torch.allclose(sae.encode(x), dense, atol=1e-5)


def test_sparsify_groupmax_refused(tmp_path):
    """Skip connections and transcoders are read (tests/test_sae_peers.py); the groupmax activation is not."""
    save_file({"encoder.weight": rnd(D_SAE, D_IN), "encoder.bias": rnd(D_SAE), "W_dec": rnd(D_SAE, D_IN),
               "b_dec": rnd(D_IN)}, tmp_path / "sae.safetensors")
    (tmp_path / "cfg.json").write_text(json.dumps({"num_latents": D_SAE, "k": K, "d_in": D_IN, "activation": "groupmax"}))
    with pytest.raises(CheckpointError, match="activation.*groupmax"):
        SAE.load(tmp_path)


# ---- Gemma Scope ----------------------------------------------------------------------------------
def test_gemma_scope_npz(tmp_path):
    p = {"W_enc": rnd(D_IN, D_SAE), "W_dec": rnd(D_SAE, D_IN), "b_enc": rnd(D_SAE), "b_dec": rnd(D_IN),
         "threshold": rnd(D_SAE).abs()}
    folder = tmp_path / "layer_5" / "width_16k" / "average_l0_70"
    folder.mkdir(parents=True)
    np.savez(folder / "params.npz", **{k: v.numpy() for k, v in p.items()})
    sae = SAE.load(folder)
    assert sae.cfg.architecture == "jumprelu" and not sae.cfg.apply_b_dec_to_input
    x = x_batch(6)
    pre = x @ p["W_enc"] + p["b_enc"]
    f = (pre > p["threshold"]) * torch.relu(pre)
    with torch.no_grad():
        assert torch.allclose(sae.encode(x), f, atol=1e-5)
        assert torch.allclose(sae(x), f @ p["W_dec"] + p["b_dec"], atol=1e-5)
    assert (f > 0).any() and (f == 0).any()


# ---- dictionary_learning --------------------------------------------------------------------------
def _dl_save(folder, cls, state, **trainer):
    folder.mkdir(parents=True)
    torch.save(state, folder / "ae.pt")
    trainer = {"submodule_name": "resid_post_layer_2", **trainer}
    (folder / "config.json").write_text(json.dumps({"trainer": {"dict_class": cls, "activation_dim": D_IN, "dict_size": D_SAE,
                                                                "layer": 2, "lm_name": "EleutherAI/pythia-70m-deduped", **trainer},
                                                    "buffer": {"ctx_len": 128, "io": "out"}}))


def test_dictionary_learning_classes(tmp_path):
    x = x_batch(5)
    # AutoEncoder: relu(encoder(x - bias)); decoder(f) + bias
    sd = {"bias": rnd(D_IN), "encoder.weight": rnd(D_SAE, D_IN), "encoder.bias": rnd(D_SAE), "decoder.weight": rnd(D_IN, D_SAE)}
    _dl_save(tmp_path / "relu", "AutoEncoder", sd)
    f = torch.relu((x - sd["bias"]) @ sd["encoder.weight"].T + sd["encoder.bias"])
    sae = SAE.load(tmp_path / "relu")
    assert sae.cfg.metadata.hook_name == "blocks.2.hook_resid_post"
    with torch.no_grad():
        assert torch.allclose(sae.encode(x), f, atol=1e-5)
        assert torch.allclose(sae(x), f @ sd["decoder.weight"].T + sd["bias"], atol=1e-5)
    # AutoEncoderTopK: topk of relu(encoder(x - b_dec))
    sd = {"b_dec": rnd(D_IN), "encoder.weight": rnd(D_SAE, D_IN), "encoder.bias": rnd(D_SAE), "decoder.weight": rnd(D_IN, D_SAE),
          "k": torch.tensor(K), "threshold": torch.tensor(-1.0)}
    _dl_save(tmp_path / "topk", "AutoEncoderTopK", sd, k=K)
    post = torch.relu((x - sd["b_dec"]) @ sd["encoder.weight"].T + sd["encoder.bias"])
    v, i = post.topk(K, dim=-1)
    f = torch.zeros_like(post).scatter(-1, i, v)
    with torch.no_grad():
        sae = SAE.load(tmp_path / "topk")
        assert torch.allclose(sae.encode(x), f, atol=1e-5)
        assert torch.allclose(sae(x), f @ sd["decoder.weight"].T + sd["b_dec"], atol=1e-5)
    # BatchTopKSAE at inference: post_relu * (post_relu > threshold)
    sd = dict(sd, threshold=torch.tensor(0.4))
    _dl_save(tmp_path / "btk", "BatchTopKSAE", sd, k=K)
    f = post * (post > 0.4)
    with torch.no_grad():
        sae = SAE.load(tmp_path / "btk")
        assert sae.cfg.architecture == "batchtopk"
        assert torch.allclose(sae.encode(x), f, atol=1e-5)
    # GatedAutoEncoder
    sd = {"decoder_bias": rnd(D_IN), "encoder.weight": rnd(D_SAE, D_IN), "r_mag": rnd(D_SAE), "gate_bias": rnd(D_SAE),
          "mag_bias": rnd(D_SAE), "decoder.weight": rnd(D_IN, D_SAE)}
    _dl_save(tmp_path / "gated", "GatedAutoEncoder", sd)
    x_enc = (x - sd["decoder_bias"]) @ sd["encoder.weight"].T
    f = ((x_enc + sd["gate_bias"]) > 0) * torch.relu(torch.exp(sd["r_mag"]) * x_enc + sd["mag_bias"])
    with torch.no_grad():
        sae = SAE.load(tmp_path / "gated")
        assert torch.allclose(sae.encode(x), f, atol=1e-5)
        assert torch.allclose(sae(x), f @ sd["decoder.weight"].T + sd["decoder_bias"], atol=1e-5)
    # JumpReluAutoEncoder: no b_dec subtraction
    sd = {"W_enc": rnd(D_IN, D_SAE), "b_enc": rnd(D_SAE), "W_dec": rnd(D_SAE, D_IN), "b_dec": rnd(D_IN), "threshold": rnd(D_SAE).abs()}
    _dl_save(tmp_path / "jr", "JumpReluAutoEncoder", sd)
    pre = x @ sd["W_enc"] + sd["b_enc"]
    f = torch.relu(pre * (pre > sd["threshold"]))
    with torch.no_grad():
        assert torch.allclose(SAE.load(tmp_path / "jr").encode(x), f, atol=1e-5)


# ---- broken and hostile files ---------------------------------------------------------------------
@pytest.fixture()
def native(tmp_path):
    sae = SAE(SAEConfig("relu", D_IN, D_SAE))
    sae.save(tmp_path / "n")
    return tmp_path / "n"


def test_truncated_safetensors(native):
    w = native / "sae_weights.safetensors"
    data = w.read_bytes()
    w.write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match="sae_weights.safetensors.*(truncated|outside)"):
        SAE.load(native)


def test_safetensors_header_claims_more_than_file(native):
    w = native / "sae_weights.safetensors"
    w.write_bytes(struct.pack("<Q", 10**12) + b"{}")
    with pytest.raises(CheckpointError, match="header"):
        SAE.load(native)


def test_shape_disagrees_with_cfg(native):
    cfg = json.loads((native / "cfg.json").read_text())
    cfg["saescope"]["d_sae"] = D_SAE * 2
    (native / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="W_enc.*shape"):
        SAE.load(native)


def test_nan_weights(tmp_path):
    sae = SAE(SAEConfig("topk", D_IN, D_SAE, k=K))
    with torch.no_grad():
        sae.W_dec[3, 4] = float("nan")
    sae.save(tmp_path / "nan")
    with pytest.raises(CheckpointError, match="W_dec.*NaN"):
        SAE.load(tmp_path / "nan")


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("touch /tmp/saescope-pwned-marker",))


def test_hostile_pickle_is_not_executed(tmp_path):
    import os

    marker = "/tmp/saescope-pwned-marker"
    if os.path.exists(marker):
        os.unlink(marker)
    torch.save({"pre_bias": torch.zeros(4), "evil": _Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="pickled objects"):
        SAE.load(tmp_path / "evil.pt")
    assert not os.path.exists(marker)


def test_unknown_architecture_and_garbage(native, tmp_path):
    cfg = json.loads((native / "cfg.json").read_text())
    del cfg["saescope"]
    cfg["architecture"] = "matching_pursuit"
    (native / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="cfg.json.*architecture 'matching_pursuit'"):
        SAE.load(native)
    (native / "cfg.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="cfg.json.*JSON"):
        SAE.load(native)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a recognised"):
        SAE.load(tmp_path / "empty")
    (tmp_path / "junk.pt").write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="junk.pt"):
        SAE.load(tmp_path / "junk.pt")


def test_unknown_release_and_spec():
    with pytest.raises(CheckpointError, match="unknown SAE release 'nope'"):
        SAE.from_pretrained("nope", "x")
    with pytest.raises(CheckpointError, match="no SAE 'blocks.99.hook_resid_pre'"):
        SAE.from_pretrained("gpt2-small-res-jb", "blocks.99.hook_resid_pre")
    with pytest.raises(SaescopeError, match="RELEASE:SAE_ID"):
        SAE.from_spec("/no/such/path")


def test_convert_cli(native, tmp_path, capsys):
    from saescope.cli import main

    assert main(["convert", str(native), str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "cfg.json").is_file()
    assert main(["convert", str(native), str(tmp_path / "out")]) == 2
    assert "destination exists" in capsys.readouterr().err
    assert main(["list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {"gpt2-small-res-jb", "gpt2-small-resid-post-v5-32k", "gemma-scope-2b-pt-res-canonical"} <= {r["name"] for r in listed}


def test_npz_claiming_more_than_it_holds(tmp_path):
    """A Gemma Scope archive whose array header claims a huge shape is refused before numpy allocates it."""
    import io
    import zipfile

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": (10**6, 10**6)})
    with zipfile.ZipFile(tmp_path / "params.npz", "w") as zf:
        zf.writestr("W_enc.npy", buf.getvalue() + b"\x00" * 64)
    with pytest.raises(CheckpointError, match="W_enc.npy.*claims shape"):
        SAE.load(tmp_path)
    (tmp_path / "params.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CheckpointError, match="params.npz"):
        SAE.load(tmp_path)
