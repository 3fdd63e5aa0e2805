"""``trace``: prompt -> attribution ``Graph``; ``load_transcoders``: a transcoder SPEC -> one transcoder per layer.

    lm = LanguageModel.from_pretrained("tiny", dtype=torch.float32)
    tcs = load_transcoders(lm)                           # the bundled tiny:mlp{L}-transcoder
    g = trace(lm, tcs, "The cat sat on the")
    g.save("cat.json")                                   # Neuronpedia JSON (pruned); .safetensors: compact, full

SPEC: ``RELEASE:ID{L}`` or ``PATH{L}`` (``{L}`` is replaced by each layer), a comma-separated list of specs, a
folder holding one transcoder per sub-folder/file, or a registry release name (its MLP transcoders).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from ..errors import InputError, SaescopeError
from ..site import sae_name
from .attribution import attribute
from .graph import Graph
from .replacement import ReplacementModel, require_float32

log = logging.getLogger(__name__)
TINY_TRANSCODERS = "tiny:mlp{L}-transcoder"


def load_transcoders(lm, spec: str | None = None) -> list:
    """One transcoder per layer of ``lm`` from ``spec`` (see the module docstring); default: the bundled ones."""
    from ..assets import TINY_MODEL_NAME
    from ..sae import SAE

    if spec is None:
        if lm.name != TINY_MODEL_NAME:
            raise InputError(f"--transcoders is required with model {lm.name} (e.g. 'RELEASE:blocks.{{L}}.tc', a "
                             "folder, or a comma-separated list)")
        spec = TINY_TRANSCODERS
    if not isinstance(spec, str) or not spec.strip():
        raise InputError("the transcoder spec is empty")
    if "{L}" in spec:
        specs = [spec.replace("{L}", str(L)) for L in range(lm.info.n_layers)]
    elif "," in spec:
        specs = [s.strip() for s in spec.split(",") if s.strip()]
    elif Path(spec).expanduser().is_dir() and not (Path(spec).expanduser() / "cfg.json").is_file():
        folder = Path(spec).expanduser()
        specs = [str(p) for p in sorted(folder.iterdir()) if p.is_dir() or p.suffix == ".safetensors"]
        if not specs:
            raise InputError(f"folder {folder} holds no transcoders (one sub-folder or .safetensors file per layer)")
    elif ":" not in spec and not Path(spec).expanduser().exists():
        from ..sae.registry import get_release

        specs = [f"{spec}:{e.id}" for e in get_release(spec).saes if (e.hook_name or "").endswith(
            ("ln2.hook_normalized", "hook_resid_mid"))]
        if not specs:
            raise InputError(f"release {spec} lists no MLP transcoders")
    else:
        specs = [spec]
    try:
        return [SAE.from_spec(s, device=lm.device) for s in specs]
    except SaescopeError as exc:
        if spec == TINY_TRANSCODERS:
            raise InputError(f"the bundled transcoders ({TINY_TRANSCODERS}) are not installed in this saescope: "
                             f"{exc}") from None
        raise


def feature_labels(transcoders) -> dict:
    """{(layer, feature): label} from each transcoder's feature store (newest explanation) and labels.json."""
    from ..site import load_labels

    out = {}
    for L, sae in enumerate(transcoders):
        for i, text in load_labels(sae).items():
            out[(L, i)] = text
        try:
            from ..report.store import FeatureStore

            store, _ = FeatureStore.for_sae_or_note(sae)
        except Exception as exc:       # labels are decoration, never a reason to fail
            log.debug("no feature store for layer %d: %s", L, exc)
            store = None
        if store is not None:
            with store:
                for e in reversed(store.explanations()):      # oldest first: the newest wins
                    out[(L, int(e["feature"]))] = e["explanation"]
    return out


def trace(lm, transcoders, prompt, target=None, max_n_logits: int = 10, desired_logit_prob: float = 0.95,
          batch_size: int = 64, quiet: bool = False) -> Graph:
    """The attribution graph of ``prompt``'s next-token prediction (unpruned; ``Graph.prune`` / ``save``).

    ``target``: one token (string or id) to attribute instead of the most likely ones."""
    from ..site import single_token_id

    require_float32(lm)
    rm = transcoders if isinstance(transcoders, ReplacementModel) else ReplacementModel(lm, transcoders)
    ids = rm.tokens(prompt)
    target_id = None if target is None else single_token_id(lm, target)[0]
    t0 = time.perf_counter()
    att = attribute(rm, ids, max_n_logits, desired_logit_prob, target_id, batch_size, quiet)
    seconds = time.perf_counter() - t0
    exact = rm.check_exact(ids, att.setup)
    s = att.setup
    g = Graph(prompt if isinstance(prompt, str) else lm.to_string(ids[0]), ids[0].cpu(),
              list(lm.to_str_tokens(ids[0])), s.features, s.activations.cpu(), att.adjacency,
              att.targets.token_ids, att.targets.probabilities,
              [lm.to_string(torch.tensor([int(t)])) for t in att.targets.token_ids], rm.n_layers, lm.name,
              [sae_name(t) for t in rm.transcoders])
    replacement, completeness = g.scores()
    g.info = {"seconds": seconds, "replacement_score": replacement, "completeness_score": completeness,
              "max_logit_error": exact, "zero_positions": rm.zero_positions}
    return g
