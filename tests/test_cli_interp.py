"""`saescope read | steer | ablate | attribute | feature` on the GPT-2-shaped offline fixture.

The read contract is checked against TransformerLens + SAELens loading the same offline gpt2-small-res-jb
release (the fixture of tests/test_sae_release.py); steering against saescope's own plain generation.
"""
from __future__ import annotations

import json

import pytest
import torch

from saescope.cli import main
from test_interp import make_sae
from test_sae_release import HOOK, release_cache  # noqa: F401  (the offline release fixture)

TEXT = "The quick brown fox jumps over the lazy dog"


@pytest.fixture(autouse=True, scope="module")
def cached_models():
    """Load each model once for the whole module (the CLI's loading itself is exercised by the first call)."""
    import saescope.cli.interp as cli

    real, cache = cli.load_model, {}

    def load(args):
        key = (args.model, args.device)
        if key not in cache:
            cache[key] = real(args)
        return cache[key]

    cli.load_model = load
    yield
    cli.load_model = real


def run(capsys, *argv):
    try:
        code = main(list(argv))
    except SystemExit as exc:      # argparse usage errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(err: str, match: str) -> None:
    """One ``error: ...`` line naming the problem (lines before it may be loading progress from transformers)."""
    lines = [ln for ln in err.replace("\r", "\n").splitlines() if ln.strip() and not ln.startswith("Loading weights")]
    assert len(lines) == 1 and lines[0].startswith("error: ") and match in lines[0], err
    assert "Traceback" not in err


@pytest.fixture(scope="module")
def sae_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("sae") / "resid6"
    make_sae().save(path)
    (path / "labels.json").write_text(json.dumps({"9": "quickness"}))
    return path


def test_read_json_matches_transformerlens_plus_saelens(capsys, release_cache, gpt2_hub, gpt2_dir):  # noqa: F811
    sl = pytest.importorskip("sae_lens")
    from transformer_lens import HookedTransformer
    from transformers import AutoModelForCausalLM

    from saescope.lm import LanguageModel

    code, out, err = run(capsys, "read", TEXT, "--top", "5", "--json", "--model", "gpt2",
                         "--sae", f"gpt2-small-res-jb:{HOOK}")
    assert code == 0, err
    got = json.loads(out)
    assert (got["model"], got["sae"], got["hook"]) == ("gpt2", f"gpt2-small-res-jb:{HOOK}", HOOK)

    lm = LanguageModel.from_pretrained(gpt2_hub, device="cpu")
    tl = HookedTransformer.from_pretrained("gpt2", hf_model=AutoModelForCausalLM.from_pretrained(gpt2_dir),
                                           tokenizer=lm.tokenizer, device="cpu", dtype=torch.float32).eval()
    ref_sae = sl.SAE.load_from_disk(release_cache / HOOK)
    tokens = tl.to_tokens(TEXT)                                   # TL prepends BOS, as the SAE expects
    assert tokens[0].tolist() == lm.to_tokens(TEXT)[0].tolist()
    _, cache = tl.run_with_cache(tokens, names_filter=[HOOK])
    with torch.no_grad():
        f_ref = ref_sae.encode(cache[HOOK])[0]                    # [pos, d_sae]
    assert [t["token"] for t in got["tokens"]] == tl.to_str_tokens(tokens)
    assert got["tokens"][0]["token"] == "<|endoftext|>"          # the BOS row
    n_compared = 0
    for p, row in enumerate(got["tokens"]):
        vals, idx = f_ref[p].topk(5)
        expect = [(int(i), float(v)) for v, i in zip(vals, idx) if v > 0]
        assert [f["index"] for f in row["features"]] == [i for i, _ in expect], p
        assert [f["activation"] for f in row["features"]] == pytest.approx([v for _, v in expect], abs=1e-3)
        n_compared += len(expect)
    assert n_compared > 2 * len(got["tokens"]), "the fixture should have several active features per token"


def test_steer_strength_zero_is_baseline_and_seeded(capsys, gpt2_hub, sae_dir):
    base = ["steer", "The quick", "--feature", "9", "--max-new-tokens", "5", "--temperature", "1.0", "--top-p", "0.95",
            "--seed", "7", "--json", "--model", "gpt2", "--sae", str(sae_dir)]
    code, out, err = run(capsys, *base, "--strength", "0")
    assert code == 0, err
    zero = json.loads(out)
    assert zero["prompt"] == "The quick" and zero["baseline"] == zero["steered"] and zero["seed"] == 7
    code, out, _ = run(capsys, *base, "--strength", "0")
    assert json.loads(out)["steered"] == zero["steered"]           # reproducible with a seed
    code, out, _ = run(capsys, *base, "--strength", "8", "--feature", "3", "--temperature", "0")
    greedy = json.loads(out)
    assert len(greedy["interventions"]) == 2 and greedy["steered"] != greedy["baseline"]
    from saescope.lm import LanguageModel

    lm = LanguageModel.from_pretrained(gpt2_hub)
    assert greedy["baseline"] == lm.generate("The quick", max_new_tokens=5, return_text=True)[0]


def test_steer_clamp_algebra_and_ablate(capsys, gpt2_hub, sae_dir):
    common = ["--max-new-tokens", "3", "--temperature", "0", "--model", "gpt2", "--sae", str(sae_dir)]
    code, out, err = run(capsys, "steer", "The quick", "--algebra", "9-3", "--strength", "4", "--json", *common)
    assert code == 0, err
    assert json.loads(out)["interventions"][0]["weights"] == [1.0, -1.0]
    code, out, err = run(capsys, "steer", "The quick", "--feature", "9", "--method", "clamp", "--strength", "5",
                         "--positions", "from:1", "--json", *common)
    assert code == 0 and json.loads(out)["interventions"][0]["positions"] == "from:1"
    code, out, err = run(capsys, "ablate", "The quick", "--feature", "9", "--feature", "3", "--json", *common)
    assert code == 0, err
    assert [iv["method"] for iv in json.loads(out)["interventions"]] == ["ablate", "ablate"]
    code, out, err = run(capsys, "steer", "The quick", "--feature", "9", "--strength", "4", *common)
    assert code == 0 and "baseline" in out and "quickness" in out              # rich table with the label


def test_read_attribute_feature_tables_and_json(capsys, gpt2_hub, sae_dir):
    common = ["--model", "gpt2", "--sae", str(sae_dir)]
    code, out, err = run(capsys, "read", TEXT, "--top", "3", *common)
    assert code == 0 and "mean L0" in out and "L0" in out
    code, out, err = run(capsys, "read", TEXT, "--top", "128", "--json", "--feature", "9", *common)
    trace = json.loads(out)["trace"]
    assert trace[0]["index"] == 9 and trace[0]["label"] == "quickness"
    assert trace[0]["activations"] == pytest.approx(
        [next((f["activation"] for f in row["features"] if f["index"] == 9), 0.0) for row in json.loads(out)["tokens"]])
    nines = [f for row in json.loads(out)["tokens"] for f in row["features"] if f["index"] == 9]
    assert nines and all(f["label"] == "quickness" for f in nines)
    assert all("label" not in f for row in json.loads(out)["tokens"] for f in row["features"] if f["index"] != 9)
    code, out, err = run(capsys, "attribute", TEXT, "--target", " the", "--json", *common)
    assert code == 0, err
    res = json.loads(out)
    assert abs(res["total"] - res["value"]) <= 1e-4 * max(1, abs(res["value"])) and res["target"] == " the"
    code, out, err = run(capsys, "attribute", TEXT, "--method", "gradient", "--top", "4", "--json", *common)
    assert code == 0 and len(json.loads(out)["features"]) == 4
    code, out, err = run(capsys, "attribute", TEXT, *common)
    assert code == 0 and "SAE error" in out and "constant" in out
    code, out, err = run(capsys, "feature", "9", "--json", *common)
    info = json.loads(out)
    assert code == 0 and info["label"] == "quickness" and len(info["promoted"]) == 10
    assert info["neuronpedia_url"] == "https://www.neuronpedia.org/gpt2-small/6-res-jb/9"
    code, out, err = run(capsys, "feature", "9", *common)
    assert code == 0 and "logit lens" in out and "features.sqlite" in out


@pytest.mark.parametrize("argv, match", [
    (["steer", "Hi", "--feature", "9", "--strength", "nan"], "finite"),
    (["steer", "Hi", "--feature", "9", "--strength", "inf"], "finite"),
    (["steer", "Hi", "--feature", "500", "--strength", "1"], "out of range"),
    (["steer", "Hi", "--feature", "9"], "--strength is required"),
    (["steer", "Hi", "--feature", "9", "--strength", "1", "--max-new-tokens", "5000"], "between 1 and 1024"),
    (["steer", "Hi", "--feature", "9", "--strength", "1", "--max-new-tokens", "-3"], "between 1 and 1024"),
    (["steer", "Hi", "--feature", "9", "--strength", "1", "--positions", "sometimes"], "positions"),
    (["steer", "word " * 100, "--feature", "9", "--strength", "1", "--max-new-tokens", "100"], "context"),
    (["read", ""], "empty"),
    (["feature", "128"], "out of range"),
    (["attribute", TEXT, "--target", "quick brown"], "not one"),
])
def test_bad_input_exits_2_with_one_line(capsys, gpt2_hub, sae_dir, argv, match):
    code, out, err = run(capsys, *argv, "--model", "gpt2", "--sae", str(sae_dir))
    assert code == 2
    assert_one_line_error(err, match)


def test_sae_for_another_model_exits_2(capsys, pythia_hub, sae_dir):
    code, out, err = run(capsys, "read", TEXT, "--model", pythia_hub, "--sae", str(sae_dir))
    assert code == 2
    assert_one_line_error(err, "trained on model 'gpt2'")
