"""Rules of the SAE layer that guard against silent wrong results: decode without a state, unknown metadata,
two formats in one folder, loader bugs that must not pass for corrupt files, and half-precision SAEs selecting
the same latents as float32 ones."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from saescope.errors import CheckpointError, ConfigError
from saescope.sae import SAE, SAEConfig, SAEMetadata

pytestmark = pytest.mark.usefixtures("one_thread")


def _random(cfg: SAEConfig, seed: int = 0, scale: float = 0.3) -> SAE:
    sae = SAE(cfg, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
            if name == "threshold":
                p.abs_()
    return sae


# ---- 1. decode(f) without a state -----------------------------------------------------------------------
@pytest.mark.parametrize("transform", ["center", "layer_norm", "constant_norm_rescale"])
def test_decode_without_state_refused_for_input_dependent_transforms(transform):
    sae = _random(SAEConfig("relu", 16, 64, apply_b_dec_to_input=True, input_transform=transform))
    x = torch.randn(5, 16) * 3 + 2
    with torch.no_grad():
        with pytest.raises(ConfigError, match=f"{transform}.*sae\\(x\\).*encode_with_state") as info:
            sae.decode(sae.encode(x))
        assert "\n" not in str(info.value)
        f, state = sae.encode_with_state(x)
        torch.testing.assert_close(sae.decode(f, state), sae(x))


@pytest.mark.parametrize("transform", ["none", "scale"])
def test_decode_without_state_fine_for_fixed_transforms(transform):
    sae = _random(SAEConfig("relu", 16, 64, input_transform=transform, input_scale=0.5))
    x = torch.randn(5, 16)
    with torch.no_grad():
        torch.testing.assert_close(sae.decode(sae.encode(x)), sae(x))


# ---- 5. unknown metadata is unknown ---------------------------------------------------------------------
def test_unknown_metadata_is_none(tmp_path):
    assert SAEMetadata().prepend_bos is None and SAEMetadata.from_dict({}).prepend_bos is None
    sae = _random(SAEConfig("relu", 8, 32))
    sae.save(tmp_path / "s")
    m = SAE.load(tmp_path / "s").cfg.metadata
    assert (m.prepend_bos, m.hook_name, m.model_name) == (None, None, None)
    np.savez(tmp_path / "params.npz", W_enc=np.zeros((8, 32), np.float32), W_dec=np.zeros((32, 8), np.float32),
             b_enc=np.zeros(32, np.float32), b_dec=np.zeros(8, np.float32), threshold=np.ones(32, np.float32))
    m = SAE.load(tmp_path / "params.npz").cfg.metadata
    assert (m.prepend_bos, m.hook_name, m.model_name) == (None, None, None)


def test_saelens_legacy_default_prepend_bos_is_the_formats(tmp_path):
    """SAELens legacy configs default prepend_bos to true (its own handle_pre_6_0_config); v6 ones do not."""
    w = {"W_enc": torch.zeros(8, 32), "W_dec": torch.zeros(32, 8), "b_enc": torch.zeros(32), "b_dec": torch.zeros(8)}
    save_file(w, str(tmp_path / "sae_weights.safetensors"))
    (tmp_path / "cfg.json").write_text(json.dumps({"d_in": 8, "d_sae": 32, "hook_point": "blocks.0.hook_resid_pre"}))
    assert SAE.load(tmp_path).cfg.metadata.prepend_bos is True
    (tmp_path / "cfg.json").write_text(json.dumps({"d_in": 8, "d_sae": 32, "architecture": "standard",
                                                   "metadata": {"sae_lens_version": "6.1.0"}}))
    assert SAE.load(tmp_path).cfg.metadata.prepend_bos is None


@pytest.mark.parametrize("field,value", [("prepend_bos", "yes"), ("hook_name", 3), ("context_size", 1e400),
                                         ("context_size", -2)])
def test_metadata_types_checked(field, value):
    with pytest.raises(ConfigError, match=f"SAEMetadata.{field}"):
        SAEMetadata.from_dict({field: value})


# ---- 3. two formats in one folder -----------------------------------------------------------------------
def test_two_formats_in_one_folder(tmp_path):
    sae = _random(SAEConfig("topk", 8, 32, k=4, apply_b_dec_to_input=True))
    sae.save(tmp_path / "both")
    sae.save(tmp_path / "sp", format="sparsify")
    for name in ("sae.safetensors",):
        (tmp_path / "both" / name).write_bytes((tmp_path / "sp" / name).read_bytes())
    with pytest.raises(CheckpointError, match="2 formats: saelens .*sparsify .*pass the file.*format=") as info:
        SAE.load(tmp_path / "both")
    assert "\n" not in str(info.value)
    x = torch.randn(4, 8)
    with torch.no_grad():
        assert torch.allclose(SAE.load(tmp_path / "both", format="saelens")(x), sae(x), atol=1e-6)
        assert torch.allclose(SAE.load(tmp_path / "both" / "sae_weights.safetensors")(x), sae(x), atol=1e-6)
    with pytest.raises(CheckpointError, match="cfg.json is shared"):
        SAE.load(tmp_path / "both" / "cfg.json")
    torch.save({}, tmp_path / "both" / "ae.pt")
    with pytest.raises(CheckpointError, match="3 formats"):
        SAE.load(tmp_path / "both")


# ---- 6. the loaders' own bugs are not "malformed checkpoint" --------------------------------------------
def test_reader_bug_is_not_reworded(tmp_path, monkeypatch):
    from saescope.sae.formats import gemma_scope

    np.savez(tmp_path / "params.npz", W_enc=np.zeros((8, 32), np.float32))

    def buggy(path):
        raise TypeError("a bug in the reader")

    monkeypatch.setattr(gemma_scope, "read", buggy)
    with pytest.raises(TypeError, match="a bug in the reader"):
        SAE.load(tmp_path / "params.npz")


# ---- 12. half precision selects the latents float32 selects ---------------------------------------------
@pytest.mark.parametrize("arch", ["topk", "jumprelu", "batchtopk", "gated"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_selects_like_float32(arch, dtype):
    cfg = SAEConfig(arch, 256, 4096, k=32 if arch == "topk" else None, apply_b_dec_to_input=True)
    half = _random(cfg, seed=2, scale=0.1).to(dtype)
    full = SAE.from_state_dict(cfg, {k: v.float() for k, v in half.state_dict().items()})  # same (rounded) weights
    x = (torch.randn(512, 256, generator=torch.Generator().manual_seed(3)) * 2).to(dtype)
    with torch.no_grad():
        f_half, f_full = half.encode(x), full.encode(x.float())
        assert f_half.dtype == dtype
        assert torch.equal(f_half > 0, f_full > 0)
        torch.testing.assert_close(f_half.float(), f_full, rtol=1e-2, atol=1e-2)
        if arch == "topk":
            code = half.encode_sparse(x)
            assert torch.equal(code.indices.sort(-1).values, full.encode_sparse(x.float()).indices.sort(-1).values)
            torch.testing.assert_close(half(x).float(), full(x.float()), rtol=0.05, atol=0.05)
        # without float32 pre-activations, the half-precision matmul's rounding does change the selection
        pre_naive = x @ half.W_enc + (half.b_enc if arch != "gated" else half.b_gate)
        pre_full = x.float() @ full.W_enc + (full.b_enc if arch != "gated" else full.b_gate)
        if arch == "topk":
            naive = pre_naive.topk(32).indices.sort(-1).values != pre_full.topk(32).indices.sort(-1).values
        else:
            cut = full.threshold if arch != "gated" else torch.zeros(())
            naive = (pre_naive.float() > cut) != (pre_full > cut)
        assert naive.any(), "test too easy: half-precision rounding flips no selection"


def test_load_directly_in_bfloat16(tmp_path):
    sae = _random(SAEConfig("topk", 64, 256, k=8))
    sae.save(tmp_path / "s")
    half = SAE.load(tmp_path / "s", dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16 and half.cfg.dtype == "bfloat16"
    torch.testing.assert_close(half.W_enc.float(), sae.W_enc.bfloat16().float())


# ---- 11. streamed loading equals whole-file loading, whatever the layout ----------------------------------
def _layouts(tmp_path, sae):
    """The same SAE as a native folder, a Gemma-Scope-like npz (C and Fortran order, deflated), an OpenAI .pt
    (transposed views, deflated) and a sparsify folder (W_enc stored transposed)."""
    import io
    import zipfile

    w = {k: v.detach() for k, v in sae.state_dict().items()}
    sae.save(tmp_path / "native")
    np.savez(tmp_path / "c.npz", **{k: v.numpy() for k, v in w.items()})
    np.savez_compressed(tmp_path / "f.npz", **{k: np.asfortranarray(v.numpy()) for k, v in w.items()})
    torch.save({"pre_bias": w["b_dec"], "encoder.weight": w["W_enc"].T, "latent_bias": w["b_enc"],
                "decoder.weight": w["W_dec"].T, "activation": "ReLU"}, tmp_path / "oa.pt")  # views, not copies
    buf = io.BytesIO((tmp_path / "oa.pt").read_bytes())
    with zipfile.ZipFile(buf) as src, zipfile.ZipFile(tmp_path / "oa_deflated.pt", "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    return [tmp_path / "native", tmp_path / "c.npz", tmp_path / "f.npz", tmp_path / "oa.pt", tmp_path / "oa_deflated.pt"]


@pytest.mark.parametrize("block_bytes", [7, 100, 2**26])
def test_streamed_load_equals_whole_load(tmp_path, monkeypatch, block_bytes):
    from saescope.sae.formats import tensorio

    monkeypatch.setattr(tensorio, "BLOCK_BYTES", block_bytes)
    relu = _random(SAEConfig("relu", 12, 40, apply_b_dec_to_input=True), seed=4)
    jump = _random(SAEConfig("jumprelu", 12, 40), seed=5)
    native, _, _, pt_views, pt_deflated = _layouts(tmp_path / "r", relu)
    for path in (native, pt_views, pt_deflated):
        for dtype in (None, torch.bfloat16, torch.float64):
            got = SAE.load(path, dtype=dtype)
            for name, p in relu.named_parameters():
                torch.testing.assert_close(getattr(got, name), p.to(got.dtype), rtol=0, atol=0, msg=f"{path} {name}")
    for path in _layouts(tmp_path / "j", jump)[1:3]:  # npz in C and Fortran order (Gemma Scope is jumprelu)
        for dtype in (None, torch.bfloat16):
            got = SAE.load(path, dtype=dtype)
            for name, p in jump.named_parameters():
                torch.testing.assert_close(getattr(got, name), p.to(got.dtype), rtol=0, atol=0, msg=f"{path} {name}")


def test_streamed_load_refuses_nan_and_overflow_in_any_block(tmp_path, monkeypatch):
    from saescope.sae.formats import tensorio

    monkeypatch.setattr(tensorio, "BLOCK_BYTES", 64)
    sae = _random(SAEConfig("relu", 12, 40))
    with torch.no_grad():
        sae.W_dec[37, 11] = float("nan")
    sae.save(tmp_path / "nan")
    with pytest.raises(CheckpointError, match="W_dec.*NaN"):
        SAE.load(tmp_path / "nan")
    sae = _random(SAEConfig("relu", 12, 40)).double()
    with torch.no_grad():
        sae.W_enc[11, 39] = 1e300
    sae.save(tmp_path / "big")
    with pytest.raises(CheckpointError, match="W_enc.*overflows float32"):
        SAE.load(tmp_path / "big", dtype=torch.float32)


def test_linear_fp32_blocks_equal_one_block():
    from saescope.sae import kernels

    g = torch.Generator().manual_seed(0)
    x, W, b = (torch.randn(7, 33, generator=g).bfloat16(), torch.randn(33, 100, generator=g).bfloat16(),
               torch.randn(100, generator=g).bfloat16())
    ref = x.float() @ W.float() + b.float()
    for block in (1, 4 * 33 * 3, 2**26):
        out = kernels.linear_fp32(x, W, b, block_bytes=block)
        assert out.dtype == torch.float32 and out.shape == (7, 100)
        torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(kernels.linear_fp32(x, W, None, block_bytes=100), x.float() @ W.float(), rtol=1e-6, atol=1e-6)
