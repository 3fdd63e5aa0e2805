"""Steering moves behaviour, on the bundled tiny model and its default SAE (skipped until both exist)."""
from __future__ import annotations

import pytest
import torch

from saescope.assets import TINY_DEFAULT_SAE, tiny_model_dir, tiny_sae_dir

pytestmark = pytest.mark.skipif(
    not (tiny_model_dir() / "model.safetensors").is_file() or not (tiny_sae_dir() / "cfg.json").is_file(),
    reason="the bundled tiny model or its default SAE is not built yet")

PROMPT = "The"
TEXT = "The king said to the queen that the war was over, and the people of the city came out to see him."
N_SAMPLES, N_NEW = 24, 10


@pytest.fixture(scope="module")
def tiny():
    from saescope.lm import LanguageModel
    from saescope.sae import SAE

    lm = LanguageModel.from_pretrained("tiny", device="cpu")
    sae = SAE.from_spec(f"tiny:{TINY_DEFAULT_SAE}")
    return lm, sae


def test_steering_raises_the_promoted_token(tiny):
    """Add the direction of a feature whose logit lens promotes token T: T becomes more frequent in seeded samples.

    Choice of the feature (deterministic, no sampling involved): among the 64 features whose top logit-lens token
    is most probable over a text, the one whose steering raises that token's mean log-probability the most in
    a single forward pass over the text. Then sampled frequency with vs without steering, same seed.
    """
    from saescope.interp import Intervention, check_fits, logit_lens, steer

    lm, sae = tiny
    check_fits(lm, sae)
    hook = sae.cfg.metadata.hook_name
    with torch.no_grad():
        strength = 2 * float(lm.run("The king said to the queen that the", capture=hook)[hook][0, 1:].norm(dim=-1).mean())
        ln = lm.final_norm()
        D = sae.feature_directions().float()
        lens = ((D - D.mean(-1, keepdim=True)) * ln.weight.float()) @ lm.unembed_matrix().float()   # [d_sae, vocab]
        top_tok = lens.argmax(-1)
        text = lm.to_tokens(TEXT)
        base = torch.log_softmax(lm(text)[0].float(), -1)                                       # [pos, vocab]
        candidates = base[:, top_tok].mean(0).topk(64).indices.tolist()
        gains = []
        for f in candidates:
            with steer(lm, sae, Intervention(f, "add", strength, normalize=True)):
                lp = torch.log_softmax(lm(text)[0].float(), -1)
            gains.append(float((lp[:, top_tok[f]] - base[:, top_tok[f]]).mean()))
    feature = candidates[max(range(len(gains)), key=gains.__getitem__)]
    token = int(top_tok[feature])
    assert logit_lens(lm, sae, feature, k=1)[0][0].token_id == token
    prompts = [PROMPT] * N_SAMPLES

    def count(steered: bool) -> int:
        ctx = steer(lm, sae, Intervention(feature, "add", strength, normalize=True)) if steered else _null()
        with ctx:
            out = lm.generate(prompts, max_new_tokens=N_NEW, do_sample=True, temperature=1.0, seed=0)
        return int((out[:, -N_NEW:] == token).sum())

    base_n, steered_n = count(False), count(True)
    print(f"feature {feature} promotes {lm.to_string(torch.tensor([token]))!r}: {base_n} -> {steered_n} in {N_SAMPLES}x{N_NEW} tokens")
    assert steered_n >= base_n + 10 and steered_n >= 2 * base_n, (feature, lm.to_string(torch.tensor([token])),
                                                                  base_n, steered_n)


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False
