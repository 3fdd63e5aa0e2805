"""Reference activations from TransformerLens 4.x, for tests/test_lm_families.py.

Runs under a Python that has transformer_lens 4.x (TransformerLens 4 cannot share an environment with SAELens 6,
so the tests call this script with the interpreter named by SAESCOPE_TL4_PYTHON). It never imports saescope.

    python compare_hooks.py JOBS.json

JOBS.json: {"tokens": [[int, ...]], "jobs": [{"model": DIR, "out": FILE.safetensors, "hooks": [name, ...],
"boot": {extra keyword arguments of boot_transformers}}, ...]}.
For each job it boots DIR with ``TransformerBridge.boot_transformers`` in compatibility mode without weight
processing (``enable_compatibility_mode(no_processing=True)``: TransformerLens 3 hook names on raw weights, the
counterpart of ``HookedTransformer.from_pretrained_no_processing``), runs the tokens once, and writes every
requested hook that the bridge has, plus "logits", to FILE. The safetensors metadata records the
transformer_lens version, the adapter class, the hooks the bridge does not have ("missing", a JSON list) and,
if booting or running failed, the error ("error").
"""
from __future__ import annotations

import json
import os
import sys


def _no_runtime_installs() -> None:
    """TransformerLens 4 pip-installs torchvision on the fly for multimodal models; never let it."""
    os.environ["PIP_NO_INDEX"] = "1"
    os.environ["UV_OFFLINE"] = "1"
    from transformer_lens.model_bridge.sources.transformers import helpers

    helpers._ensure_torchvision = lambda: False


def run_job(job: dict, tokens, version: str) -> None:
    import torch
    from safetensors.torch import save_file
    from transformer_lens.model_bridge import TransformerBridge

    meta = {"transformer_lens": version, "missing": "[]"}
    tensors = {}
    try:
        bridge = TransformerBridge.boot_transformers(job["model"], device="cpu", dtype=torch.float32,
                                                     **job.get("boot", {}))
        bridge.enable_compatibility_mode(no_processing=True, disable_warnings=True)
        meta["adapter"] = type(bridge.adapter).__name__
        with torch.no_grad():
            logits, cache = bridge.run_with_cache(torch.tensor(tokens, dtype=torch.long))
        keys = set(cache.keys())
        tensors = {name: cache[name].detach().clone() for name in job["hooks"] if name in keys}
        tensors["logits"] = logits.detach().clone()
        meta["missing"] = json.dumps([name for name in job["hooks"] if name not in keys])
    except Exception as exc:  # recorded for the test to report, one line
        meta["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    save_file(tensors, job["out"], metadata=meta)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    _no_runtime_installs()
    import transformer_lens

    version = getattr(transformer_lens, "__version__", None)
    if version is None:
        from importlib.metadata import version as dist_version

        version = dist_version("transformer_lens")
    with open(argv[0]) as f:
        spec = json.load(f)
    for job in spec["jobs"]:
        run_job(job, spec["tokens"], version)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
