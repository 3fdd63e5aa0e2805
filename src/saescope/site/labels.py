"""Feature labels: ``labels.json`` beside an SAE, ``{"<index>": "label"}``. Absent or unreadable -> no labels."""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path

log = logging.getLogger(__name__)

LABELS_FILE = "labels.json"
_SURROGATE = re.compile("[\ud800-\udfff]")


def load_labels(sae_or_path) -> dict[int, str]:
    """Labels of an SAE (or of the SAE directory ``path``), as ``{index: label}``.

    A missing file gives ``{}``; an unreadable or malformed one gives ``{}`` and a warning (labels are
    decoration, never a reason to fail). Keys that are not feature indices are skipped.
    """
    path = getattr(sae_or_path, "path", sae_or_path)
    if path is None:
        return {}
    file = Path(path)
    if file.is_dir():
        file = file / LABELS_FILE
    if not file.is_file():
        return {}
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        log.warning("ignoring %s: not readable JSON (%s)", file, exc)
        return {}
    if not isinstance(raw, dict):
        log.warning("ignoring %s: expected an object {\"<index>\": \"label\"}", file)
        return {}
    labels: dict[int, str] = {}
    for key, value in raw.items():
        try:
            index = int(key)
        except (TypeError, ValueError):
            continue
        if isinstance(value, str) and index >= 0:
            # a lone surrogate ("\ud800" in the JSON) cannot be stored or written as UTF-8: shown as U+FFFD
            labels[index] = _SURROGATE.sub("\ufffd", value)
    return labels
