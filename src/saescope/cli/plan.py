"""``saescope plan``: will model + SAE + batch fit the device, and at which batch sizes (configs only)."""
from __future__ import annotations

import argparse

from .common import bounded_int, print_json

TASKS = ("read", "steer", "train", "stats", "eval")


def register(sub) -> None:
    p = sub.add_parser("plan", help="memory plan: does model + SAE + batch fit the device (reads configs only)",
                       description="Say, before loading anything, whether the model, the SAE, the batch, the KV cache "
                                   "and the training state fit the device, and the largest batch sizes that do. "
                                   "Reads the model's config.json and the SAE's cfg.json only. "
                                   "Exit code 1 when a task does not fit.")
    p.add_argument("--model", default="tiny", help="HF model id, local directory or 'tiny' (default)")
    p.add_argument("--sae", default=None, help="local SAE path or RELEASE:SAE_ID (default: tiny:resid2-topk)")
    p.add_argument("--device-memory", default=None, metavar="SIZE",
                   help="plan for a card of this size (10GB, 24GiB, 80GB; GB = GiB); default: this machine's device now")
    p.add_argument("--device", default=None, help="cpu or cuda[:N] (default: cuda when available)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"), help="model dtype")
    p.add_argument("--sae-dtype", default=None, choices=("float32", "bfloat16", "float16"),
                   help="SAE dtype (default: the checkpoint's; for train the compute dtype under autocast)")
    p.add_argument("--task", default="all", choices=("all",) + TASKS, help="one task or all (default)")
    p.add_argument("--context", type=bounded_int(1, 1 << 20), default=None,
                   help="tokens per sequence (default: read/steer the model's n_ctx up to 1024; stats/eval 128)")
    p.add_argument("--batch-tokens", type=bounded_int(1, 1 << 30), default=None,
                   help="check this many tokens in flight instead of choosing the largest that fits")
    p.add_argument("--d-in", type=bounded_int(1, 1 << 24), default=None, help="SAE input width, for formats without a config")
    p.add_argument("--d-sae", type=bounded_int(1, 1 << 24), default=None, help="SAE latents, for formats without a config")
    p.add_argument("--from-activations", action="store_true", help="train: from cached activations (no model loaded)")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(handler=cmd_plan)


def cmd_plan(args: argparse.Namespace) -> int:
    from ..assets import TINY_DEFAULT_SAE, TINY_MODEL_NAME
    from ..errors import InputError
    from ..plan import plan

    sae = args.sae
    if sae is None:
        if args.model != TINY_MODEL_NAME:
            raise InputError(f"--sae is required with --model {args.model}")
        sae = f"{TINY_MODEL_NAME}:{TINY_DEFAULT_SAE}"
    tasks = TASKS if args.task == "all" else (args.task,)
    report = plan(args.model, sae, memory=args.device_memory, device=args.device, dtype=args.dtype,
                  sae_dtype=args.sae_dtype, tasks=tasks, context=args.context, batch_tokens=args.batch_tokens,
                  d_in=args.d_in, d_sae=args.d_sae, from_activations=args.from_activations)
    if args.json:
        print_json(report.to_dict())
    else:
        print(report.describe())
    return 0 if all(t.fits for t in report.tasks.values()) else 1
