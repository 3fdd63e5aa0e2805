"""Range checks for every number that enters saescope from a file, a flag or a request.

One helper, used where values enter (loaders, configs, the CLI, the server), so an infinite, overflowing or
absurd number is a one-line error naming where it came from, never a crash deep inside torch:

    n = checked_int(raw.get("d_sae"), "cfg.json: d_sae", lo=1, hi=MAX_DIM, error=CheckpointError)
    t = checked_float(args.temperature, "--temperature", lo=0, hi=100)
    check_alloc(4 * n * d, "the activation buffer")          # before allocating what a value asks for

``what`` names the source ("cfg.json: d_sae", "--lr", "request field top_p"); it starts the message.
"""
from __future__ import annotations

import math
import operator
import os
import re

from .errors import InputError, SaescopeError

MAX_DIM = 2**24          # widest tensor dimension accepted from a file (d_in, d_sae, d_model, vocab: 16.7M)
MAX_SEED = 2**63 - 1     # torch generators take a signed 64-bit seed
MAX_POSITION = 2**31 - 1  # steering positions from:N / at:N: beyond any model's context
_POS_RE = re.compile(r"(all|prompt|generated)|(from|at):([0-9]+)")


def checked_int(value, what: str, lo: int | None = None, hi: int | None = None,
                error: type[SaescopeError] = InputError) -> int:
    """``value`` as an int in ``[lo, hi]``; an integral float (``4.0``) is accepted, ``True``/``4.5``/``inf`` are not."""
    if isinstance(value, bool):
        raise error(f"{what}: expected an integer, got {value!r}")
    if isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            raise error(f"{what}: expected an integer, got {value!r}")
        value = int(value)
    else:
        try:
            value = operator.index(value)
        except TypeError:
            raise error(f"{what}: expected an integer, got {_show(value)}") from None
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise error(f"{what}: {_show(value)} is out of range ({_range(lo, hi)})")
    return value


def checked_float(value, what: str, lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
                  hi_open: bool = False, error: type[SaescopeError] = InputError) -> float:
    """``value`` as a finite float in the range (``lo_open``/``hi_open`` exclude the bound)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise error(f"{what}: expected a number, got {_show(value)}")
    try:
        value = float(value)
    except OverflowError:
        raise error(f"{what}: {_show(value)} is too large") from None
    if not math.isfinite(value):
        raise error(f"{what}: must be a finite number, got {value!r}")
    below = lo is not None and (value <= lo if lo_open else value < lo)
    above = hi is not None and (value >= hi if hi_open else value > hi)
    if below or above:
        raise error(f"{what}: {value!r} is out of range ({_range(lo, hi, lo_open, hi_open)})")
    return value


def check_positions(spec, what: str = "positions") -> str:
    """``spec`` if it is ``all``, ``prompt``, ``generated``, ``from:N`` or ``at:N`` with 0 <= N <= MAX_POSITION;
    else an InputError naming ``what`` and the value (escaped, shortened). Used by the CLI and the server."""
    m = _POS_RE.fullmatch(spec) if isinstance(spec, str) else None
    shown = repr(spec) if len(repr(spec)) <= 43 else repr(spec)[:40] + "..."
    if m is None:
        raise InputError(f"{what}: must be all, prompt, generated, from:N or at:N, got {shown}")
    if m.group(3) is not None:
        if len(m.group(3)) > 20:
            raise InputError(f"{what}: N of {shown} is out of range (0..{MAX_POSITION})")
        checked_int(int(m.group(3)), f"{what} {m.group(2)}:N", lo=0, hi=MAX_POSITION)
    return spec


def available_memory() -> int | None:
    """Bytes of memory the system can still give this process (Linux ``MemAvailable``), or None when unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_alloc(n_bytes: int | float, what: str, error: type[SaescopeError] = InputError,
                limit: int | None = None, fraction: float = 0.9) -> None:
    """Refuse, before allocating, ``n_bytes`` for ``what`` when it exceeds ``limit`` (default: ``fraction`` of the
    memory available now). Unknown available memory refuses only what no machine could hold (> 2**50 bytes)."""
    cap = limit if limit is not None else available_memory()
    cap = int(cap * fraction) if cap is not None and limit is None else cap
    if cap is None:
        cap = 2**50
    if not math.isfinite(n_bytes) or n_bytes > cap:
        raise error(f"{what} needs {format_bytes(n_bytes)}, more than the {format_bytes(cap)} available; "
                    f"use smaller sizes")


def format_bytes(n: int | float) -> str:
    if not math.isfinite(n):
        return "unbounded memory"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _range(lo, hi, lo_open: bool = False, hi_open: bool = False) -> str:
    if lo is not None and hi is not None:
        if lo_open or hi_open or isinstance(lo, float) or isinstance(hi, float):
            return f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
        return f"{lo}..{hi}"
    if lo is not None:
        return f"must be {'>' if lo_open else '>='} {lo}"
    return f"must be {'<' if hi_open else '<='} {hi}"
