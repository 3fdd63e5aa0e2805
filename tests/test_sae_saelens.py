"""SAELens round trip: SAEs saved by SAELens load in saescope with equal outputs, and the reverse.

SAELens 6.54 is the reference implementation of each architecture's math here.
"""
from __future__ import annotations

import pytest
import torch

from saescope.sae import SAE, SAEConfig

D_IN, D_SAE, K = 24, 96, 8


@pytest.fixture(scope="module")
def sl():
    return pytest.importorskip("sae_lens")


def _randomize(module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if name != "threshold" else 0.2))
            if name == "threshold":
                p.abs_()


def _saelens_sae(sl, arch: str, **kw):
    classes = {"standard": (sl.StandardSAE, sl.StandardSAEConfig), "topk": (sl.TopKSAE, sl.TopKSAEConfig),
               "jumprelu": (sl.JumpReLUSAE, sl.JumpReLUSAEConfig), "gated": (sl.GatedSAE, sl.GatedSAEConfig)}
    cls, cfg_cls = classes[arch]
    extra = {"k": K} if arch == "topk" else {}
    sae = cls(cfg_cls(d_in=D_IN, d_sae=D_SAE, **extra, **kw))
    _randomize(sae, seed=hash(arch) % 1000)
    return sae


CASES = [
    ("standard", {}),
    ("standard", {"apply_b_dec_to_input": False, "normalize_activations": "constant_norm_rescale"}),
    ("topk", {}),
    ("topk", {"normalize_activations": "layer_norm"}),
    ("topk", {"rescale_acts_by_decoder_norm": True}),
    ("jumprelu", {"apply_b_dec_to_input": False}),
    ("jumprelu", {}),
    ("gated", {}),
]


@pytest.mark.parametrize("arch,kw", CASES, ids=[f"{a}-{'-'.join(f'{k}={v}' for k, v in kw.items()) or 'default'}" for a, kw in CASES])
def test_saelens_saved_loads_in_saescope(sl, tmp_path, arch, kw):
    ref = _saelens_sae(sl, arch, **kw)
    ref.save_model(tmp_path)
    ours = SAE.load(tmp_path)
    x = torch.randn(3, 7, D_IN) * 2 + 0.5
    with torch.no_grad():
        f_ref = ref.encode(x)
        out_ref = ref.decode(f_ref)          # uses the normalisation state of the encode just above
        f = ours.encode(x)
        out = ours(x)
    assert torch.allclose(f, f_ref, atol=1e-5), (f - f_ref).abs().max()
    assert torch.allclose(out, out_ref, atol=1e-5), (out - out_ref).abs().max()
    if kw.get("normalize_activations") is None:  # decode of arbitrary codes, no input state involved
        codes = torch.relu(torch.randn(5, D_SAE))
        with torch.no_grad():
            assert torch.allclose(ours.decode(codes), ref.decode(codes), atol=1e-5)
    assert (f > 0).sum() > 0  # not a vacuous comparison


@pytest.mark.parametrize("arch", ["relu", "topk", "jumprelu", "gated"])
def test_saescope_saved_loads_in_saelens(sl, tmp_path, arch):
    cfg = SAEConfig(arch, D_IN, D_SAE, k=K if arch == "topk" else None, apply_b_dec_to_input=(arch != "jumprelu"),
                    input_transform="layer_norm" if arch == "topk" else "none")
    ours = SAE(cfg)
    _randomize(ours, seed=7)
    ours.log_sparsity = torch.randn(D_SAE)
    ours.save(tmp_path / "sae")
    ref = sl.SAE.load_from_disk(tmp_path / "sae")
    x = torch.randn(4, 5, D_IN) * 3
    with torch.no_grad():
        f_ref = ref.encode(x)
        out_ref = ref.decode(f_ref)
        f, out = ours.encode(x), ours(x)
    assert torch.allclose(f, f_ref, atol=1e-5)
    assert torch.allclose(out, out_ref, atol=1e-5)
    again = SAE.load(tmp_path / "sae")
    assert again.cfg == ours.cfg.replace() and torch.equal(again.log_sparsity, ours.log_sparsity)


def test_scale_transform_saved_folded_for_saelens(sl, tmp_path):
    """A fixed input scale is folded on save, so SAELens (which has no such transform) computes the same."""
    ours = SAE(SAEConfig("relu", D_IN, D_SAE, apply_b_dec_to_input=True, input_transform="scale", input_scale=0.25))
    _randomize(ours, seed=3)
    ours.save(tmp_path / "s")
    ref = sl.SAE.load_from_disk(tmp_path / "s")
    x = torch.randn(6, D_IN) * 4
    with torch.no_grad():
        assert torch.allclose(ours.encode(x), ref.encode(x), atol=1e-5)
        assert torch.allclose(ours(x), ref(x), atol=1e-5)
