"""``saescope list`` (pretrained releases) and ``saescope convert SRC DST`` (any format -> native)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import InputError
from .common import add_architecture_arg, print_json


def register(sub) -> None:
    p = sub.add_parser("list", help="list pretrained SAE releases (or the SAEs of one release)",
                       description="List the pretrained SAE releases saescope knows; with --release, the SAEs in it.")
    p.add_argument("--release", default=None, help="show the SAE ids of this release")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON instead of a table")
    p.set_defaults(handler=cmd_list)

    p = sub.add_parser("convert", help="convert an SAE checkpoint to the native format (SAELens v6 layout)",
                       description="Read an SAE in any supported format (SAELens, OpenAI .pt, sparsify, "
                                   "dictionary_learning, Gemma Scope .npz) or RELEASE:SAE_ID and write the native format.")
    p.add_argument("src", help="checkpoint path or RELEASE:SAE_ID")
    p.add_argument("dst", help="destination directory (must not exist)")
    p.add_argument("--json", action="store_true", help="print the written config as JSON")
    add_architecture_arg(p)
    p.set_defaults(handler=cmd_convert)


def cmd_list(args: argparse.Namespace) -> int:
    from ..sae.registry import get_release, releases

    if args.release:
        rel = get_release(args.release)
        if args.json:
            print_json(rel.to_dict())
            return 0
        rows = [(e.id, e.hook_name or "", e.neuronpedia_id or "") for e in rel.saes]
        _table(f"{rel.name}: {rel.description}", ("SAE id", "hook", "neuronpedia"), rows)
        return 0
    rels = releases()
    if args.json:
        print_json([{k: v for k, v in r.to_dict().items() if k != "saes"} | {"n_saes": len(r.saes)} for r in rels])
        return 0
    rows = [(r.name, r.model, r.format, str(len(r.saes)), r.input_transform or "from checkpoint",
             r.repo_id or "(bundled)") for r in rels]
    _table("SAE releases (use RELEASE:SAE_ID; `saescope list --release NAME` for ids)",
           ("release", "model", "format", "SAEs", "input transform", "repo"), rows)
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from ..sae import SAE

    dst = Path(args.dst)
    if dst.exists():
        raise InputError(f"{dst}: destination exists; choose a new directory (convert never overwrites)")
    sae = SAE.from_spec(args.src, architecture=args.architecture)
    sae.save(dst)
    if args.json:
        print_json(sae.cfg.to_dict())
    else:
        sys.stdout.write(f"wrote {dst} ({sae!r})\n")
    return 0


def _table(title: str, header: tuple, rows: list[tuple]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for h in header:
        table.add_column(h, overflow="fold")
    for row in rows:
        table.add_row(*row)
    Console(width=None if sys.stdout.isatty() else 200).print(table)  # pipes get full rows, not 80 columns
