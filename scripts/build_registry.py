"""Build saescope's release registry (src/saescope/sae/registry.json) from SAELens's published release list.

    python scripts/build_registry.py                      # the installed sae_lens's pretrained_saes.yaml
    python scripts/build_registry.py --yaml PATH          # another copy of the list
    python scripts/build_registry.py --check              # exit 1 if the committed registry differs

Per release the list gives the repo, the model (a TransformerLens name or a hub id), the loader family
(``conversion_func``) and per SAE the id, the path in the repo, L0, the Neuronpedia id and, for some, the
dataset-norm scaling factor. This script maps each family to saescope's reader (``format``), each model to
its hub id, and derives per SAE the facts the family's published layout fixes: hook name(s), layer, sizes
stated by the id, TopK k. Curated facts (descriptions, input transforms, notes) and exclusions are below.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "src" / "saescope" / "sae" / "registry.json"
SAE_FIELDS = ("id", "path", "hook_name", "hook_name_out", "neuronpedia_id", "l0", "d_sae", "d_in", "k",
              "norm_scaling_factor", "hf_hook_name", "hf_hook_name_out")

# SAELens conversion_func -> saescope format (formats/families.py)
FORMATS = {None: "saelens", "gemma_2": "gemma_scope", "gemma_3": "gemma_scope_2", "qwen_scope": "qwen_scope",
           "dictionary_learning_1": "dictionary_learning", "llama_scope": "llama_scope",
           "llama_scope_r1_distill": "llama_scope_r1", "gemma_2_transcoder": "gemma_scope_transcoder",
           "mwhanna_transcoder": "plt_transcoder", "mntss_clt_layer_transcoder": "clt_layer",
           "goodfire": "goodfire", "deepseek_r1": "deepseek_r1", "connor_rob_hook_z": "attn_z",
           "temporal": "temporal"}

# TransformerLens model names used by the list -> Hugging Face hub ids ("gpt2" is the hub's own alias)
MODEL_IDS = {"gpt2-small": "gpt2", "pythia-70m-deduped": "EleutherAI/pythia-70m-deduped",
             "gemma-2b": "google/gemma-2b", "gemma-2b-it": "google/gemma-2b-it",
             "gemma-2-2b": "google/gemma-2-2b", "gemma-2-9b": "google/gemma-2-9b",
             "gemma-2-9b-it": "google/gemma-2-9b-it", "gemma-2-27b": "google/gemma-2-27b",
             "mistral-7b": "mistralai/Mistral-7B-v0.1", "qwen3-0.6b": "Qwen/Qwen3-0.6B",
             "qwen3-1.7b": "Qwen/Qwen3-1.7B", "qwen3-4b": "Qwen/Qwen3-4B", "qwen3-8b": "Qwen/Qwen3-8B",
             "qwen3-14b": "Qwen/Qwen3-14B"}

# Hidden sizes the published loaders state (SAELens's Gemma Scope and Qwen Scope tables; Gemma 3 configs)
D_MODEL = {"google/gemma-2-2b": 2304, "google/gemma-2-9b": 3584, "google/gemma-2-9b-it": 3584,
           "google/gemma-2-27b": 4608, "google/gemma-3-270m": 640, "google/gemma-3-270m-it": 640,
           "google/gemma-3-1b-pt": 1152, "google/gemma-3-1b-it": 1152, "google/gemma-3-4b-pt": 2560,
           "google/gemma-3-4b-it": 2560, "google/gemma-3-12b-pt": 3840, "google/gemma-3-12b-it": 3840,
           "google/gemma-3-27b-pt": 5376, "google/gemma-3-27b-it": 5376, "Qwen/Qwen3-1.7B-Base": 2048,
           "Qwen/Qwen3-8B-Base": 4096, "Qwen/Qwen3-30B-A3B-Base": 2048, "Qwen/Qwen3.5-2B-Base": 2048,
           "Qwen/Qwen3.5-9B-Base": 4096, "Qwen/Qwen3.5-27B": 5120, "Qwen/Qwen3.5-35B-A3B-Base": 2048,
           "meta-llama/Llama-3.1-8B": 4096, "deepseek-ai/DeepSeek-R1-Distill-Llama-8B": 4096}
GEMMA2_ATTN_D_IN = {"google/gemma-2-2b": 2048, "google/gemma-2-9b": 4096, "google/gemma-2-9b-it": 4096,
                    "google/gemma-2-27b": 4608}

# Releases of the list left out, with the reason (the registry test fails on any other missing release).
EXCLUDED: dict[str, str] = {}

_OAI = "OpenAI's GPT-2 small v5 TopK SAEs ({w} latents, k=32) on {kind}, SAELens-format mirror; inputs are layer-normalised"
# Facts the list does not carry, established by the project (tests/test_sae_release.py and the docs).
CURATED: dict[str, dict] = {
    "gpt2-small-res-jb": {"description": "Joseph Bloom's GPT-2 small residual-stream SAEs (24,576 latents, ReLU), "
                          "trained on TransformerLens activations with centred writing weights"},
    **{f"gpt2-small-{kind}-v5-{w}": {"input_transform": "layer_norm",
                                     "description": _OAI.format(w=w, kind=kind.replace("-", "_"))}
       for kind in ("resid-post", "resid-mid", "mlp-out", "attn-out") for w in ("32k", "128k")},
    "gpt2-small-hook-z-kk": {
        "description": "Kissane & Krzyzanowski's GPT-2 small attention-output SAEs on hook_z (heads concatenated)",
        "input_transform": "none", "input_shift": "attn_value_bias",
        "note": "trained on TransformerLens's processed hook_z, which is the raw z minus the per-head value bias "
                "(b_V + ln_1.b @ W_V; TL folds it into b_O): call sae.fold_input_shift(that bias) before applying "
                "it to raw activations"},
    "pythia-70m-deduped-res-sm": {"input_transform": "none", "description": "Samuel Marks's Pythia-70m-deduped "
                                  "residual-stream SAEs (dictionary_learning, SAELens-format mirror)"},
    "gemma-scope-2b-pt-res-canonical": {"input_transform": "none", "description": "Gemma Scope 2B residual-stream "
                                        "JumpReLU SAEs, canonical L0 per layer and width"},
}
TINY = {"description": "SAEs bundled with saescope for the bundled tiny model (saescope/assets/tiny/saes/)",
        "format": "saelens", "model": "tiny", "prepend_bos": True, "local": True}

TL_HOOKS = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_mlp_out", "hook_attn_out", "attn.hook_z")
RESIDUAL_WRITES = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_mlp_out", "hook_attn_out")


# Gemma Scope widths as named in the repos (powers of two, as the published loader's table says)
WIDTHS = {"4k": 2**12, "16k": 2**14, "32k": 2**15, "65k": 2**16, "131k": 2**17, "262k": 2**18, "524k": 2**19,
          "1m": 2**20}


def _width(text: str) -> int | None:
    m = re.search(r"width_(\d+[km])(?![a-z0-9])", text)
    if m:
        return WIDTHS.get(m.group(1))
    m = re.search(r"width-2pow(\d+)", text)
    return 2 ** int(m.group(1)) if m else None


def _layer(text: str, pattern: str) -> int:
    m = re.search(pattern, text)
    if m is None:
        raise SystemExit(f"build_registry: cannot find the layer in {text!r} ({pattern})")
    return int(m.group(1))


def _hook_from_id(sae_id: str) -> str | None:
    """A TransformerLens hook named by an SAELens-native id (``blocks.8.hook_resid_pre_768`` -> ``...pre``)."""
    m = re.fullmatch(r"blocks\.(\d+)\.(attn\.hook_z|hook_z|hook_[a-z]+_[a-z]+|hook_[a-z]+)(_\d+)?", sae_id)
    if m is None:
        return None
    kind = "attn.hook_z" if m.group(2) == "hook_z" else m.group(2)
    return f"blocks.{m.group(1)}.{kind}" if kind in TL_HOOKS else None


# ---- per family: the facts of one SAE ------------------------------------------------------------------------
def facts_saelens(rel, s, model):
    return {"hook_name": _hook_from_id(s["id"])}


def facts_attn_z(rel, s, model):
    return {"hook_name": _hook_from_id(s["id"])}


def facts_gemma_scope(rel, s, model):
    path, repo = s["path"], rel["repo_id"]
    out = {"d_sae": _width(path)}
    if path.startswith("embedding/"):
        return {**out, "hook_name": "hook_embed", "d_in": D_MODEL[model]}
    layer = _layer(path, r"layer_(\d+)")
    if repo.endswith("-res"):
        return {**out, "hook_name": f"blocks.{layer}.hook_resid_post", "d_in": D_MODEL[model]}
    if repo.endswith("-mlp"):
        return {**out, "hook_name": f"blocks.{layer}.hook_mlp_out", "d_in": D_MODEL[model]}
    if repo.endswith("-att"):
        return {**out, "hook_name": f"blocks.{layer}.attn.hook_z", "d_in": GEMMA2_ATTN_D_IN[model]}
    raise SystemExit(f"build_registry: unknown Gemma Scope repo {repo}")


_G3 = {"resid_post": ("blocks.{L}.hook_resid_post", None, "model.layers.{L}", None),
       "attn_out": ("blocks.{L}.attn.hook_z", None, "model.layers.{L}.self_attn.o_proj:input", None),
       "mlp_out": ("blocks.{L}.hook_mlp_out", None, "model.layers.{L}.post_feedforward_layernorm", None),
       "transcoder": ("blocks.{L}.mlp.hook_in", "blocks.{L}.hook_mlp_out",
                      "model.layers.{L}.pre_feedforward_layernorm", "model.layers.{L}.post_feedforward_layernorm")}


def facts_gemma_scope_2(rel, s, model):
    path = s["path"]
    kind = next(k for k in _G3 if path.split("/")[0].startswith(k))
    layer = _layer(path, r"layer_(\d+)")
    hook, hook_out, hf, hf_out = (h.format(L=layer) if h else None for h in _G3[kind])
    out = {"hook_name": hook, "hook_name_out": hook_out, "hf_hook_name": hf, "hf_hook_name_out": hf_out,
           "d_sae": _width(path)}
    if kind != "attn_out":
        out["d_in"] = D_MODEL[model]
    return out


def facts_qwen_scope(rel, s, model):
    m = re.search(r"SAE-Res-(.+?)-W(\d+)K-L0_(\d+)", rel["repo_id"])
    layer = _layer(s["path"], r"layer(\d+)\.sae\.pt")
    return {"hook_name": f"blocks.{layer}.hook_resid_post", "hf_hook_name": f"model.layers.{layer}",
            "d_sae": int(m.group(2)) * 1024, "k": int(m.group(3)), "d_in": D_MODEL[model]}


def facts_dictionary_learning(rel, s, model):
    layer = _layer(s["path"], r"resid_post_layer_(\d+)")
    return {"hook_name": f"blocks.{layer}.hook_resid_post", "d_sae": _width(s["path"])}


_LLAMA_SCOPE = {"r": "hook_resid_post", "m": "hook_mlp_out", "a": "hook_attn_out"}


def facts_llama_scope(rel, s, model):
    m = re.fullmatch(r"l(\d+)([rma])_(\d+)x", s["id"])
    return {"hook_name": f"blocks.{m.group(1)}.{_LLAMA_SCOPE[m.group(2)]}", "d_in": 4096,
            "d_sae": 4096 * int(m.group(3))}


def facts_llama_scope_r1(rel, s, model):
    layer = _layer(s["path"], r"/L(\d+)R$")
    return {"hook_name": f"blocks.{layer}.hook_resid_post", "d_in": 4096}


def facts_gemma_scope_transcoder(rel, s, model):
    layer = _layer(s["path"], r"layer_(\d+)")
    return {"hook_name": f"blocks.{layer}.ln2.hook_normalized", "hook_name_out": f"blocks.{layer}.hook_mlp_out",
            "d_in": D_MODEL[model], "d_sae": _width(s["path"])}


def facts_plt_transcoder(rel, s, model):
    layer = _layer(s["path"], r"layer_(\d+)\.safetensors$")
    return {"hook_name": f"blocks.{layer}.mlp.hook_in", "hook_name_out": f"blocks.{layer}.hook_mlp_out"}


def facts_clt_layer(rel, s, model):
    return {}  # hooks come from the repo's config.yaml


_GOODFIRE = {"Goodfire/Llama-3.3-70B-Instruct-SAE-l50": (50, 8192, 65536),
             "Goodfire/Llama-3.1-8B-Instruct-SAE-l19": (19, 4096, 65536)}


def facts_goodfire(rel, s, model):
    layer, d_in, d_sae = _GOODFIRE[rel["repo_id"]]
    return {"hook_name": f"blocks.{layer}.hook_resid_post", "d_in": d_in, "d_sae": d_sae}


def facts_deepseek_r1(rel, s, model):
    layer = _layer(s["path"], r"-l(\d+)\.pt$")
    return {"hook_name": f"blocks.{layer}.hook_resid_post", "d_in": 4096, "d_sae": 65536}


def facts_temporal(rel, s, model):
    return {"hook_name": f"blocks.{_layer(s['path'], 'layer_([0-9]+)')}.hook_resid_post"}


# ---- per release ---------------------------------------------------------------------------------------------
def model_id(name: str, rel: dict) -> str:
    if rel.get("conversion_func") == "gemma_2":  # the published loader takes pt/it from the repo, not the list
        size = re.search(r"gemma-scope-(\d+b)-(pt|it)", rel["repo_id"])
        name = f"gemma-2-{size.group(1)}" + ("-it" if size.group(2) == "it" else "")
    if "/" in name:
        return name
    if name not in MODEL_IDS:
        raise SystemExit(f"build_registry: no hub id for model {name!r}; add it to MODEL_IDS")
    return MODEL_IDS[name]


def input_transform(rel: dict, hooks: list[str | None]) -> str | None:
    over = rel.get("config_overrides") or {}
    if over.get("normalize_activations") == "constant_norm_rescale":
        return "constant_norm_rescale"
    if (over.get("model_from_pretrained_kwargs") or {}).get("center_writing_weights"):
        # TL's centred writing weights make every residual write mean-zero: on raw activations, subtract the mean
        if hooks and all(h and h.split(".")[-1] in RESIDUAL_WRITES for h in hooks):
            return "center"
        raise SystemExit("build_registry: center_writing_weights on a hook that is not a residual write")
    return None


PREPEND_BOS_SAID = {"gemma_scope", "gemma_scope_2", "llama_scope", "llama_scope_r1", "dictionary_learning",
                    "deepseek_r1", "qwen_scope", "gemma_scope_transcoder", "attn_z"}
KIND_WORDS = {"saelens": "SAEs", "gemma_scope": "Gemma Scope JumpReLU SAEs", "gemma_scope_2": "Gemma Scope 2 JumpReLU",
              "qwen_scope": "Qwen Scope TopK SAEs", "dictionary_learning": "dictionary_learning SAEs",
              "llama_scope": "Llama Scope JumpReLU SAEs", "llama_scope_r1": "Llama Scope R1-Distill JumpReLU SAEs",
              "gemma_scope_transcoder": "Gemma Scope JumpReLU transcoders",
              "plt_transcoder": "per-layer transcoders (circuit-tracer layout)",
              "clt_layer": "cross-layer transcoder, one layer per SAE id (circuit-tracer layout)",
              "goodfire": "Goodfire ReLU SAE", "deepseek_r1": "ReLU SAE", "attn_z": "attention hook_z SAEs",
              "temporal": "temporal SAEs"}


def describe(name: str, fmt: str, model: str, saes: list[dict]) -> str:
    def kind(hook):
        return hook.split(".", 2)[2] if hook and hook.startswith("blocks.") else hook

    hooks = sorted({kind(s.get("hook_name")) + (f" -> {kind(s['hook_name_out'])}" if s.get("hook_name_out") else "")
                    for s in saes if s.get("hook_name")})
    what = KIND_WORDS[fmt]
    if fmt == "gemma_scope_2":
        what += " transcoders" if any(s.get("hook_name_out") for s in saes) else " SAEs"
    where = f" on {', '.join(hooks)}" if hooks else ""
    return f"{what} for {model}{where} ({len(saes)} SAE{'s' if len(saes) != 1 else ''}; SAELens release {name})"


def build_release(name: str, rel: dict) -> dict:
    conv = rel.get("conversion_func")
    if conv not in FORMATS:
        raise SystemExit(f"build_registry: release {name}: unknown conversion_func {conv!r}; add a family")
    fmt = FORMATS[conv]
    model = model_id(rel["model"], rel)
    derive = globals()[f"facts_{fmt}"]
    saes = []
    for s in rel["saes"]:
        row = {"id": str(s["id"]), "path": str(s["path"]), "neuronpedia_id": s.get("neuronpedia"),
               "l0": s.get("l0"), "norm_scaling_factor": s.get("norm_scaling_factor")}
        row.update({k: v for k, v in derive(rel, s, model).items() if v is not None})
        saes.append(row)
    out = {"description": describe(name, fmt, model, saes), "format": fmt, "model": model,
           "repo_id": rel["repo_id"], "input_transform": input_transform(rel, [s.get("hook_name") for s in saes]),
           "prepend_bos": True if fmt in PREPEND_BOS_SAID else None, "note": None, "input_shift": None,
           "unsupported": None, "sae_lens": {"model": rel["model"], "conversion": conv},
           "links": dict(rel.get("links") or {})}
    if fmt == "temporal":
        from saescope.sae.formats.temporal import REASON
        out["unsupported"] = REASON
    out.update(CURATED.get(name, {}))
    out["saes"] = [[row.get(f) for f in SAE_FIELDS] for row in saes]
    for r in out["saes"]:
        while r and r[-1] is None:
            r.pop()
    return out


def load_list(path: Path | None) -> tuple[dict, str]:
    import yaml

    if path is None:  # located without importing sae_lens (which imports torch and TransformerLens)
        from importlib.metadata import version as dist_version
        from importlib.util import find_spec

        spec = find_spec("sae_lens")
        if spec is None or not spec.origin:
            raise SystemExit("build_registry: sae_lens is not installed; pass --yaml PATH")
        path, version = Path(spec.origin).with_name("pretrained_saes.yaml"), dist_version("sae-lens")
    else:
        version = "unknown"
    with open(path, encoding="utf-8") as f:
        return yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)), version


def build(data: dict, version: str) -> dict:
    releases = {name: build_release(name, rel) for name, rel in data.items() if name not in EXCLUDED}
    releases["tiny"] = dict(TINY, saes=[])
    return {"version": 2, "source": {"sae_lens_version": version, "releases": len(data),
                                     "saes": sum(len(r["saes"]) for r in data.values())},
            "sae_fields": list(SAE_FIELDS), "excluded": dict(EXCLUDED), "releases": releases}


def dumps(registry: dict) -> str:
    """JSON with one release header and one SAE per line (readable diffs)."""
    head = {k: v for k, v in registry.items() if k != "releases"}
    lines = ["{"] + [f" {json.dumps(k)}: {json.dumps(v)}," for k, v in head.items()] + [' "releases": {']
    names = list(registry["releases"])
    for i, name in enumerate(names):
        rel = dict(registry["releases"][name])
        saes = rel.pop("saes")
        body = json.dumps(rel, separators=(",", ":"))[:-1]
        rows = ",\n".join("   " + json.dumps(r, separators=(",", ":")) for r in saes)
        tail = "," if i < len(names) - 1 else ""
        lines.append(f"  {json.dumps(name)}: {body},\"saes\":[" + (f"\n{rows}\n  ]}}{tail}" if saes else f"]}}{tail}"))
    lines += [" }", "}"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--yaml", type=Path, default=None, help="pretrained_saes.yaml (default: the installed sae_lens's)")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--check", action="store_true", help="only compare with the file at --out")
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT / "src"))
    text = dumps(build(*load_list(args.yaml)))
    if args.check:
        same = args.out.is_file() and args.out.read_text(encoding="utf-8") == text
        print("registry is up to date" if same else f"{args.out} differs: run scripts/build_registry.py")
        return 0 if same else 1
    from saescope._io import atomic_write_text

    atomic_write_text(args.out, text)
    args.out.chmod(0o644)  # package data: readable by everyone
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
