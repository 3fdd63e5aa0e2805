"""Run circuit-tracer's attribution on a GPT-2 HF directory and per-layer transcoder files; write its graph.

    python ct_graph.py MODEL_DIR TRANSCODER_DIR IDS_JSON OUT.safetensors [BATCH]

Also writes its Neuronpedia JSON (``create_graph_files``, node threshold 0.8, edge threshold 0.98) as OUT's folder
/ ct.json.

TRANSCODER_DIR holds layer{L}.safetensors in circuit-tracer's SingleLayerTranscoder layout (W_enc [d_sae, d],
W_dec [d_sae, d], b_enc, b_dec, optional W_skip [d, d]), ReLU activation, reading ln2.hook_normalized and writing
hook_mlp_out. Runs in an environment where circuit-tracer (with TransformerLens) imports; prints one JSON line
with versions and the attribution time.
"""
import json
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def main(model_dir, tc_dir, ids_json, out, batch="64"):
    from importlib.metadata import version

    from circuit_tracer import attribute
    from circuit_tracer.replacement_model.replacement_model_transformerlens import TransformerLensReplacementModel
    from circuit_tracer.transcoder.single_layer_transcoder import SingleLayerTranscoder, TranscoderSet
    from transformer_lens import HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions.gpt2 import convert_gpt2_weights
    from transformers import AutoTokenizer, GPT2LMHeadModel

    torch.set_grad_enabled(True)
    hf = GPT2LMHeadModel.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    c = hf.config
    cfg = HookedTransformerConfig(n_layers=c.n_layer, d_model=c.n_embd, n_ctx=c.n_positions, d_head=c.n_embd // c.n_head,
                                  n_heads=c.n_head, d_mlp=c.n_inner or 4 * c.n_embd, d_vocab=c.vocab_size,
                                  act_fn=c.activation_function, normalization_type="LN", eps=c.layer_norm_epsilon,
                                  device="cpu", dtype=torch.float32, model_name="gpt2-random",
                                  tokenizer_name=str(model_dir))
    tcs = {}
    for L in range(c.n_layer):
        w = load_file(str(Path(tc_dir) / f"layer{L}.safetensors"))
        t = SingleLayerTranscoder(c.n_embd, w["W_enc"].shape[0], torch.nn.ReLU(), L, skip_connection="W_skip" in w,
                                  device="cpu", dtype=torch.float32)
        t.load_state_dict(w)
        tcs[L] = t
    ts = TranscoderSet(tcs, feature_input_hook="ln2.hook_normalized", feature_output_hook="hook_mlp_out", scan="test")
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = TransformerLensReplacementModel.from_config(cfg, ts, tokenizer=tok)
    state = {k.replace(".mlp.", ".mlp.old_mlp.").replace("unembed.", "unembed.old_unembed."): v
             for k, v in convert_gpt2_weights(hf, cfg).items()}      # its MLP/unembed wrappers
    missing, unexpected = model.load_state_dict(state, strict=False)
    bad = [k for k in missing if not k.endswith(("IGNORE", "mask", "b_U")) and "transcoders" not in k]
    assert not unexpected and not bad, (unexpected, bad)
    ids = torch.tensor(json.loads(Path(ids_json).read_text()), dtype=torch.long)
    t0 = time.perf_counter()
    g = attribute(ids, model, batch_size=int(batch), max_n_logits=10, desired_logit_prob=0.95)
    dt = time.perf_counter() - t0
    save_file({"adjacency": g.adjacency_matrix.contiguous(), "active_features": g.active_features.contiguous(),
               "selected_features": g.selected_features.contiguous(),
               "activation_values": g.activation_values.contiguous(),
               "logit_ids": g.logit_token_ids.contiguous(), "logit_probs": g.logit_probabilities.contiguous()}, out)
    from circuit_tracer.utils.create_graph_files import create_graph_files

    create_graph_files(g, "ct", str(Path(out).parent), scan="test", node_threshold=0.8, edge_threshold=0.98)
    print(json.dumps({"seconds": dt, "circuit_tracer": version("circuit-tracer"),
                      "transformer_lens": version("transformer-lens"), "transformers": version("transformers"),
                      "torch": torch.__version__}))


if __name__ == "__main__":
    main(*sys.argv[1:])
