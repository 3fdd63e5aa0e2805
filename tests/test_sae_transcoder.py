"""Transcoders and Matryoshka SAEs in the SAE core: shapes, the skip path, the error term, and SAELens's own
classes loading what saescope writes."""
from __future__ import annotations

import pytest
import torch

from saescope.errors import ConfigError
from saescope.sae import SAE, SAEConfig

META = {"hook_name": "blocks.0.ln2.hook_normalized", "hook_name_out": "blocks.0.hook_mlp_out", "model_name": "tiny"}


def _random(cfg: SAEConfig, seed: int = 0) -> SAE:
    sae = SAE(cfg, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return sae


@pytest.mark.parametrize("arch,skip", [("relu", False), ("relu", True), ("jumprelu", False), ("topk", True)])
def test_transcoder_forward_is_decoder_plus_skip(arch, skip):
    cfg = SAEConfig(arch, d_in=8, d_sae=32, d_out=6, k=4 if arch == "topk" else None, skip=skip, metadata=META)
    sae = _random(cfg)
    x = torch.randn(3, 5, 8)
    f = sae.encode(x)
    assert f.shape == (3, 5, 32)
    expected = f @ sae.W_dec + sae.b_dec + (x @ sae.W_skip.T if skip else 0)
    torch.testing.assert_close(sae(x), expected, rtol=1e-5, atol=1e-5)
    target = torch.randn(3, 5, 6)
    torch.testing.assert_close(sae.error(x, target), target - expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError, match="target"):
        sae.error(x)


def test_transcoder_config_rules():
    with pytest.raises(ConfigError, match="input_transform"):
        SAEConfig("relu", d_in=8, d_sae=32, d_out=6, input_transform="center")
    with pytest.raises(ConfigError, match="apply_b_dec_to_input"):
        SAEConfig("relu", d_in=8, d_sae=32, d_out=6, apply_b_dec_to_input=True)
    with pytest.raises(ConfigError, match="skip"):
        SAEConfig("relu", d_in=8, d_sae=32, skip=True)
    with pytest.raises(ConfigError, match="matryoshka_widths"):
        SAEConfig("batchtopk", d_in=8, d_sae=32, k=4, matryoshka_widths=(8, 8, 32))
    with pytest.raises(ConfigError, match="matryoshka_widths"):
        SAEConfig("batchtopk", d_in=8, d_sae=32, k=4, matryoshka_widths=(8, 16))
    cfg = SAEConfig("batchtopk", d_in=8, d_sae=32, k=4, matryoshka_widths=[8, 16, 32])
    assert cfg.matryoshka_widths == (8, 16, 32) and SAEConfig.from_json(cfg.to_json()) == cfg


def test_transcoder_input_shift_leaves_the_output_alone():
    cfg = SAEConfig("relu", d_in=8, d_sae=32, d_out=6, skip=True, metadata=META)
    sae = _random(cfg)
    x = torch.randn(10, 8)
    shift = torch.randn(8)
    before = sae(x - shift)
    sae.fold_input_shift(shift)
    torch.testing.assert_close(sae(x), before, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch,skip,expected", [("relu", False, "Transcoder"), ("relu", True, "SkipTranscoder"),
                                                ("jumprelu", False, "JumpReLUTranscoder"),
                                                ("jumprelu", True, "JumpReLUSkipTranscoder")])
def test_saelens_loads_saved_transcoders(tmp_path, arch, skip, expected):
    from sae_lens import SAE as LensSAE

    sae = _random(SAEConfig(arch, d_in=8, d_sae=32, d_out=6, skip=skip, metadata=META))
    sae.save(tmp_path / "tc")
    theirs = LensSAE.load_from_disk(str(tmp_path / "tc"), device="cpu")
    assert type(theirs).__name__ == expected
    x = torch.randn(7, 8)
    with torch.no_grad():
        torch.testing.assert_close(theirs(x), sae(x), rtol=1e-5, atol=1e-5)
    again = SAE.load(tmp_path / "tc")
    assert again.cfg == sae.cfg
    torch.testing.assert_close(again(x), sae(x))
