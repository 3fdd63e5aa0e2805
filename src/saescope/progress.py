"""Progress bars for long loops: tqdm, quiet when stderr is not a TTY or SAESCOPE_NO_PROGRESS=1."""
from __future__ import annotations

import os
import sys

from tqdm import tqdm   # the text bar everywhere: tqdm.auto needs ipywidgets in Jupyter, and warns without it


def progress_enabled() -> bool:
    if os.environ.get("SAESCOPE_NO_PROGRESS") == "1":
        return False
    if os.environ.get("SAESCOPE_PROGRESS") == "1":
        return True
    return sys.stderr.isatty()


def progress(iterable=None, **kwargs) -> tqdm:
    """``tqdm(iterable, **kwargs)``, disabled unless progress is enabled (``disable=`` overrides)."""
    kwargs.setdefault("disable", not progress_enabled())
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)
