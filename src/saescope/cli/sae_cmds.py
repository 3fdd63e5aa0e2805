"""``saescope list`` (pretrained releases) and ``saescope convert SRC DST`` (any format -> native).

``list`` reads the registry only: no torch, no network.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import InputError
from .common import add_architecture_arg, print_json


def register(sub) -> None:
    p = sub.add_parser("list", help="list pretrained SAE releases (or the SAEs of one release)",
                       description="List the pretrained SAE releases saescope knows (SAELens's published list); "
                                   "with --release, the SAEs in it.")
    p.add_argument("--release", default=None, help="show the SAEs of this release")
    p.add_argument("--model", default=None, help="only releases for this model (part of its hub id, e.g. gemma-2-2b)")
    p.add_argument("--search", default=None, metavar="TEXT",
                   help="only releases (or SAEs) whose name, description, repo, hooks or Neuronpedia id contain "
                        "every word of TEXT")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON instead of a table")
    p.set_defaults(handler=cmd_list)

    p = sub.add_parser("convert", help="convert an SAE checkpoint to the native format (SAELens v6 layout)",
                       description="Read an SAE in any supported format (SAELens, OpenAI .pt, sparsify, "
                                   "dictionary_learning, Gemma Scope .npz, Gemma Scope 2, Llama Scope) or "
                                   "RELEASE:SAE_ID and write the native format.")
    p.add_argument("src", help="checkpoint path or RELEASE:SAE_ID")
    p.add_argument("dst", help="destination directory (must not exist)")
    p.add_argument("--format", default=None, metavar="FMT",
                   help="read SRC (a local path) as this format or release family (e.g. qwen_scope, goodfire, "
                        "deepseek_r1, plt_transcoder, clt_layer; see docs/formats.md) instead of detecting it")
    p.add_argument("--json", action="store_true", help="print the written config as JSON")
    add_architecture_arg(p)
    p.set_defaults(handler=cmd_convert)


def cmd_list(args: argparse.Namespace) -> int:
    from ..sae import registry

    if args.release:
        return _list_release(registry.get_release(args.release), args)
    found = registry.search(args.search, args.model)
    if not found and (args.search or args.model):
        raise InputError(f"no release matches{f' --model {args.model}' if args.model else ''}"
                         f"{f' --search {args.search!r}' if args.search else ''} (see `saescope list`)")
    if args.json:
        out = []
        for summary, ids in found:
            row = dict(summary)
            if ids is not None:
                row["matching_saes"] = ids
            out.append(row)
        print_json(out)
        return 0
    rows = []
    for s, ids in found:
        n = str(s["n_saes"]) if ids is None else f"{len(ids)} of {s['n_saes']}"
        status = f"refused: {s['unsupported'][:40]}..." if s["unsupported"] else (s["input_transform"] or "")
        rows.append((s["name"], s["model"], s["format"], n, status, s["repo_id"] or "(bundled)"))
    _table(f"{len(rows)} SAE release{'s' if len(rows) != 1 else ''} (load RELEASE:SAE_ID; `saescope list --release NAME` for ids)",
           ("release", "model", "format", "SAEs", "input transform / status", "repo"), rows)
    return 0


def _list_release(rel, args) -> int:
    terms = (args.search or "").lower().split()

    def wanted(e) -> bool:
        text = " ".join(str(v) for v in (e.id, e.path, e.hook_name, e.hook_name_out, e.neuronpedia_id) if v).lower()
        return all(t in text for t in terms)

    entries = [e for e in rel.saes if wanted(e)]
    if args.json:
        d = rel.to_dict()
        keep = {e.id for e in entries}
        d["saes"] = [s for s in d["saes"] if s["id"] in keep]
        print_json(d)
        return 0
    rows = [(e.id, e.hook_name or "", e.hook_name_out or "", "" if e.l0 is None else f"{e.l0:g}",
             "" if e.d_sae is None else str(e.d_sae), e.neuronpedia_id or "") for e in entries]
    title = f"{rel.name}: {rel.description}" + (f" [refused on load: {rel.unsupported}]" if rel.unsupported else "")
    _table(title, ("SAE id", "hook", "hook out", "L0", "d_sae", "neuronpedia"), rows)
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from ..sae import SAE

    dst = Path(args.dst)
    if dst.exists():
        raise InputError(f"{dst}: destination exists; choose a new directory (convert never overwrites)")
    if args.format:
        from ..sae.formats import load_sae

        if not Path(args.src).expanduser().exists():
            raise InputError(f"{args.src}: --format needs a local path (a RELEASE:SAE_ID knows its format)")
        sae = load_sae(args.src, fmt=args.format, architecture=args.architecture)
    else:
        sae = SAE.from_spec(args.src, architecture=args.architecture)
    sae.save(dst)
    if args.json:
        print_json(sae.cfg.to_dict())
    else:
        sys.stdout.write(f"wrote {dst} ({sae!r})\n")
    return 0


def _table(title: str, header: tuple, rows: list[tuple]) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(title), title_justify="left")  # names like "[refused]" are text, not markup
    for h in header:
        table.add_column(h, overflow="fold")
    for row in rows:
        table.add_row(*(escape(c) for c in row))
    Console(width=None if sys.stdout.isatty() else 200).print(table)  # pipes get full rows, not 80 columns
