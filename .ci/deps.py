"""Print pip requirements for the compatibility venv from pyproject.toml's declared ranges.

    python .ci/deps.py oldest   ->  transformers==4.56 tokenizers==0.22 ...   (each lower bound, pinned)
    python .ci/deps.py newest   ->  transformers>=4.56,<6 tokenizers>=0.22 ... (the ranges, for pip install -U)
"""
from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

PACKAGES = ("transformers", "tokenizers", "huggingface_hub", "safetensors")


def main(which: str) -> None:
    data = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    specs = {re.split(r"[<>=!~ ]", d, maxsplit=1)[0]: d for d in data["project"]["dependencies"]}
    out = []
    for name in PACKAGES:
        spec = specs.get(name)
        low = re.search(r">=\s*([0-9][0-9.]*)", spec or "")
        if low is None:
            sys.exit(f"pyproject.toml: dependency {name} has no lower bound (>=)")
        out.append(f"{name}=={low.group(1)}" if which == "oldest" else spec.replace(" ", ""))
    print(" ".join(out))


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in ("oldest", "newest"):
        sys.exit("usage: deps.py oldest|newest")
    main(sys.argv[1])
