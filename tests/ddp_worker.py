"""Run by tests/test_train_ddp.py and benchmarks/bench_ddp.py under torchrun (or alone): a short streamed training run
on the bundled model that records, per rank, how many tokens went through the language model and a hash of the
trained weights."""
from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

import torch

from saescope import LanguageModel, TrainConfig, train_sae
from saescope.train import distributed as ddp


def main(out: str, steps: int, batch: int, threads: int) -> None:
    torch.set_num_threads(threads)
    lm = LanguageModel.from_pretrained("tiny")
    seen = [0]
    lm.hf_model.get_input_embeddings().register_forward_hook(lambda mod, args, out: seen.__setitem__(0, seen[0] + args[0].numel()))
    texts = [f"The army of {w} marched through the snow towards Moscow while the prince spoke of war and peace. " * 4
             for w in ("Napoleon", "Kutuzov", "the king", "France", "Russia", "Austria", "the emperor", "Pierre")] * max(60, steps * batch // 400)
    cfg = TrainConfig(architecture="topk", d_sae=512, k=8, batch_size=batch, total_tokens=steps * batch,
                      context_size=64, buffer_tokens=1024, harvest_batch_size=4, init_sample_tokens=batch, plots=False, log_every=1000)
    t0 = time.perf_counter()
    sae = train_sae((lm, "blocks.1.hook_resid_pre", texts), cfg)
    seconds = time.perf_counter() - t0
    digest = hashlib.sha256(b"".join(t.detach().float().numpy().tobytes() for _, t in sorted(sae.state_dict().items())))
    rank = ddp.rank()
    Path(out, f"rank{rank}.json").write_text(json.dumps({"rank": rank, "world": ddp.world_size(), "lm_tokens": seen[0],
                                                         "seconds": seconds, "weights": digest.hexdigest()}))
    ddp.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
