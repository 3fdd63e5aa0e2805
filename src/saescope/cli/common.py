"""Arguments and helpers shared by several subcommands. No logic beyond parsing and printing."""
from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

from ..errors import InputError


def add_model_args(p: argparse.ArgumentParser, sae: bool = True) -> None:
    """--model / --sae / --device / --json. Both default to the bundled tiny model and its default SAE."""
    p.add_argument("--model", default=None, help="HF model id, local directory, or 'tiny' (default: the bundled tiny model)")
    if sae:
        p.add_argument("--sae", default=None, help="local SAE path or RELEASE:SAE_ID (default: tiny:resid2-topk)")
    add_architecture_arg(p)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: cuda if available, else cpu)")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON instead of tables")


def add_architecture_arg(p: argparse.ArgumentParser) -> None:
    from ..sae.config import ARCHITECTURES

    p.add_argument("--architecture", default=None, choices=ARCHITECTURES,
                   help="the SAE architecture, for a local checkpoint that does not record it (e.g. a "
                        "dictionary_learning ae.pt without config.json)")


def load_model(args) -> Any:
    from ..lm import LanguageModel

    return LanguageModel.from_pretrained(args.model or "tiny", device=args.device)


def load_sae(args, lm=None) -> Any:
    """The SAE named by --sae (default: the bundled default SAE when the model is the bundled one)."""
    from ..assets import TINY_DEFAULT_SAE, TINY_MODEL_NAME
    from ..sae import SAE

    spec = args.sae
    if spec is None:
        if args.model not in (None, TINY_MODEL_NAME):
            raise InputError(f"--sae is required with --model {args.model} (e.g. gpt2-small-res-jb:blocks.6.hook_resid_pre)")
        spec = f"{TINY_MODEL_NAME}:{TINY_DEFAULT_SAE}"
    device = lm.device if lm is not None else args.device
    return SAE.from_spec(spec, device=device, architecture=getattr(args, "architecture", None))


def finite_float(text: str) -> float:
    """argparse type: a finite float (rejects nan and inf with one line)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be finite, got {text!r}")
    return value


def bounded_int(lo: int, hi: int):
    """argparse type: an int in [lo, hi]."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"must be between {lo} and {hi}, got {value}")
        return value

    return parse


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, ensure_ascii=False, indent=None)
    sys.stdout.write("\n")
