"""Arguments and helpers shared by several subcommands. No logic beyond parsing and printing."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .._checks import check_positions, checked_float, checked_int
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


MAX_SEED = 2**32 - 1          # every --seed (numpy and torch generators both take it)


def _argtype(check):
    """An argparse type from a ``saescope._checks``-style check: its InputError becomes argparse's one line."""

    def parse(text: str):
        try:
            return check(text)
        except InputError as exc:
            msg = str(exc)
            raise argparse.ArgumentTypeError(msg[len("value: "):] if msg.startswith("value: ") else msg) from None

    return parse


def _number(text: str, kind, what: str):
    try:
        return kind(text)
    except (ValueError, OverflowError):
        shown = repr(text) if len(text) <= 40 else repr(text[:37]) + "..."
        if text.strip().lstrip("+-").isdigit():    # more digits than Python converts
            raise InputError(f"{what}: {shown} is out of range") from None
        raise InputError(f"{what}: not {'an integer' if kind is int else 'a number'}: {shown}") from None


def finite_float(text: str) -> float:
    """argparse type: a finite float (rejects nan and inf with one line)."""
    return bounded_float()(text)


def bounded_float(lo: float | None = None, hi: float | None = None, lo_open: bool = False, hi_open: bool = False):
    """argparse type: a finite float in the range (``saescope._checks.checked_float``); tiny values are kept."""
    return _argtype(lambda text: checked_float(_number(text, float, "value"), "value", lo, hi,
                                               lo_open=lo_open, hi_open=hi_open))


def bounded_int(lo: int, hi: int):
    """argparse type: an int in [lo, hi]; out of range: "must be between LO and HI, got N" (N shortened)."""

    def check(text: str) -> int:
        value = checked_int(_number(text, int, "value"), "value")
        if not lo <= value <= hi:
            shown = str(value) if len(str(value)) <= 40 else str(value)[:37] + "..."
            raise InputError(f"value: must be between {lo} and {hi}, got {shown}")
        return value

    return _argtype(check)


positions_arg = _argtype(lambda text: check_positions(text, "value"))
seed_arg = bounded_int(0, MAX_SEED)


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, ensure_ascii=False, indent=None)
    sys.stdout.write("\n")
