"""Attribution-graph files for the graph-view tests, written with circuit-tracer's own graph-file models
(``circuit_tracer.frontend.graph_models``: the pydantic classes its ``create_graph_files`` serialises), so the
view is tested against the schema a peer writes, not one re-typed here; and random per-layer transcoders for
graphs traced by ``saescope.graph``."""
from __future__ import annotations

import json
from pathlib import Path

TOKENS = ["<|endoftext|>", "The", " cat", " sat", " on"]
N_LAYERS = 2
# (layer, pos, feature index, activation, cumulative influence, clerp)
FEATURES = [(0, 1, 7, 2.5, 0.10, "the word The"), (0, 2, 3, 1.25, 0.20, "cats & <animals>"),
            (0, 3, 9, 0.8, 0.62, "verbs of sitting"), (1, 3, 5, 3.0, 0.05, "after an animal"),
            (1, 4, 11, 1.5, 0.30, "prepositions"), (1, 4, 2, 0.4, 0.95, "weak feature")]


def build_graph(slug: str = "cat", transcoders: list[str] | None = None) -> dict:
    """A small graph: embeddings, six transcoder features on two layers, two error nodes and two logits,
    with excitatory and inhibitory links. ``transcoders``: ``metadata.transcoder_list`` (one spec per layer)."""
    from circuit_tracer.frontend.graph_models import Metadata, Model, Node, QParams

    nodes = [Node.token_node(p, 100 + p, influence=0.5) for p in range(len(TOKENS))]
    feats = []
    for layer, pos, idx, act, infl, clerp in FEATURES:
        n = Node.feature_node(layer, pos, idx, influence=infl, activation=act)
        n.clerp = clerp
        feats.append(n)
    nodes += feats
    errs = [Node.error_node(0, 2, influence=0.4), Node.error_node(1, 4, influence=0.7)]
    nodes += errs
    logits = [Node.logit_node(len(TOKENS) - 1, 262, " the", N_LAYERS, target_logit=True, token_prob=0.61),
              Node.logit_node(len(TOKENS) - 1, 257, " a", N_LAYERS, token_prob=0.22)]
    nodes += logits
    emb = {p: nodes[p].node_id for p in range(len(TOKENS))}
    f = [n.node_id for n in feats]
    links = [(emb[1], f[0], 1.5), (emb[2], f[1], 2.0), (emb[3], f[2], 0.9), (f[0], f[3], 0.7), (f[1], f[3], 1.1),
             (f[2], f[3], -0.6), (emb[4], f[4], 1.8), (f[3], f[4], 0.5), (errs[0].node_id, f[3], 0.3),
             (f[3], logits[0].node_id, 2.2), (f[4], logits[0].node_id, 1.7), (f[4], logits[1].node_id, -0.8),
             (f[5], logits[1].node_id, 0.05), (emb[4], f[5], 0.2), (errs[1].node_id, logits[0].node_id, 0.4),
             (emb[4], logits[0].node_id, 0.01)]
    meta = Metadata(slug=slug, scan="saescope-test", transcoder_list=transcoders or [], prompt_tokens=TOKENS,
                    prompt="".join(TOKENS[1:]), node_threshold=0.8)
    q = QParams(pinnedIds=[], supernodes=[], linkType="both", clickedId="", sg_pos="")
    model = Model(metadata=meta, qParams=q, nodes=nodes,
                  links=[{"source": s, "target": t, "weight": w} for s, t, w in links])
    return json.loads(model.model_dump_json())


def write_graph(path: Path, **kw) -> dict:
    g = build_graph(**kw)
    Path(path).write_text(json.dumps(g, indent=1))
    return g


def random_transcoders(lm, folder, d_sae: int = 48):
    """One random ReLU transcoder per layer (ln2.hook_normalized -> hook_mlp_out), saved and loaded back from disk
    so that each has a path (the graph records it)."""
    import torch

    from saescope.sae import SAE, SAEConfig
    from saescope.sae.config import SAEMetadata

    g = torch.Generator().manual_seed(0)
    out = []
    for L in range(lm.info.n_layers):
        cfg = SAEConfig("relu", d_in=lm.info.d_model, d_sae=d_sae, d_out=lm.info.d_model, metadata=SAEMetadata(
            model_name=lm.name, hook_name=f"blocks.{L}.ln2.hook_normalized", hook_name_out=f"blocks.{L}.hook_mlp_out",
            prepend_bos=True))
        sae = SAE(cfg, seed=L)
        with torch.no_grad():
            sae.b_enc.copy_(-1.0 + 0.5 * torch.rand(d_sae, generator=g))
        sae.save(folder / f"tc{L}")
        out.append(SAE.load(folder / f"tc{L}"))
    return out
