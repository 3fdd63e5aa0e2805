"""Prepare ../shared/corpus for the embedded model: strip Gutenberg, normalise, split.

war_and_peace.txt stores its accented letters double-encoded (UTF-8 bytes read as cp1252/Latin-1 and encoded
again: "KutÃºzov" for "Kutúzov"); ``repair_mojibake`` decodes each such two-character pair back to its letter and
leaves every other character alone (the corpus README describes the defect; the file itself stays byte-identical).

Each file is cut at a line boundary: the first 95% trains, the last 5% is held out.
Every figure the project reports for the embedded model is measured on the held-out slice.
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

CORPUS_DIR = Path(os.environ.get("SAESCOPE_CORPUS", Path(__file__).resolve().parents[2] / "shared" / "corpus"))
FILES = {
    "tinyshakespeare.txt": "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
    "war_and_peace.txt": "de5c482b0e6dc6a1fb1be7d2c07f92fee994b4eef146747826cc55f1283cce16",
}
HELD_OUT_FRACTION = 0.05


def _strip_gutenberg(text: str) -> str:
    start = text.find("*** START OF")
    end = text.find("*** END OF")
    if start == -1 or end == -1:
        return text
    start = text.index("\n", start) + 1
    return text[start:end]


# a lead character of a two-byte UTF-8 sequence (Â = C2, Ã = C3) followed by a continuation byte 80-BF as cp1252
# or Latin-1 shows it (cp1252 maps 80-9F to punctuation such as ‚ ƒ „ … † ‡ ˆ ‰ Š ‹ Œ Ž ‘ ’ “ ” • – — ˜ ™ š › œ ž Ÿ)
_CONTINUATION = "".join(bytes([b]).decode("cp1252", errors="ignore") or chr(b) for b in range(0x80, 0xC0))
_MOJIBAKE = re.compile("[ÂÃ][" + re.escape(_CONTINUATION) + "]|Ã ")  # "Ã ": à whose no-break space became a space


def _one_char(match: re.Match) -> str:
    pair = match.group(0)
    if pair == "Ã ":
        return "à"
    try:
        raw = pair.encode("cp1252")
    except UnicodeEncodeError:
        raw = pair.encode("latin-1")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return pair


def repair_mojibake(text: str) -> tuple[str, int]:
    """(text with every double-encoded two-character pair decoded back, number of pairs repaired)."""
    return _MOJIBAKE.subn(_one_char, text)


def load_file(name: str, corpus_dir: Path = CORPUS_DIR) -> str:
    raw = (Path(corpus_dir) / name).read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != FILES[name]:
        raise SystemExit(f"{name}: sha256 {digest} does not match the corpus README")
    text = raw.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")
    text, _ = repair_mojibake(text)
    return _strip_gutenberg(text).strip("\n") + "\n"


def split(text: str, fraction: float = HELD_OUT_FRACTION) -> tuple[str, str]:
    """Cut at the first newline after (1 - fraction) of the text: (train, held_out)."""
    cut = text.index("\n", int(len(text) * (1 - fraction))) + 1
    return text[:cut], text[cut:]


def train_and_held_out(corpus_dir: Path = CORPUS_DIR) -> dict[str, tuple[str, str]]:
    return {name: split(load_file(name, corpus_dir)) for name in FILES}


if __name__ == "__main__":
    for name, (train, held) in train_and_held_out().items():
        print(f"{name}: train {len(train):,} chars, held-out {len(held):,} chars")
