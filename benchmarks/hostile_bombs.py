"""Time and peak memory to refuse each hostile SAE file (compression bombs, size claims), one fresh process each.

    python benchmarks/hostile_bombs.py [--src SRC_DIR] [--only NAME ...]

For every bomb in ``tests/fuzz_util.py`` (``BOMBS``) a child process imports saescope from ``--src`` (default:
this checkout's ``src``), records its RSS after the imports, calls ``SAE.load`` on the file, and reports the
outcome, the wall time of the load and its peak RSS (``VmHWM``). Run it with ``--src`` pointing at an
older checkout to compare. Target: each refused in under 2 s and under 300 MB peak RSS.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

CHILD = r"""
import json, sys, time
import torch, saescope.sae
from saescope.sae import SAE
def hwm():  # VmHWM: this process's own peak (ru_maxrss would include the parent's, inherited across fork+exec)
    line = next(x for x in open("/proc/self/status") if x.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024
base = hwm()
path = sys.argv[1]
t = time.perf_counter()
try:
    kw = {"architecture": "relu"} if path.endswith("ae.pt") else {}
    try:
        SAE.load(path, **kw)
    except TypeError:  # an older saescope without architecture=
        SAE.load(path)
    outcome = "LOADED"
except Exception as exc:
    outcome = f"{type(exc).__name__}: {str(exc).splitlines()[0][:110] if str(exc) else ''}"
dt = time.perf_counter() - t
print(json.dumps({"outcome": outcome, "seconds": dt, "base_mb": base,
                  "peak_mb": hwm()}))
"""


def main() -> None:
    import fuzz_util as fu

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", default=str(ROOT / "src"))
    ap.add_argument("--only", nargs="*", default=None)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (build, what) in fu.BOMBS.items():
            if args.only and name not in args.only:
                continue
            d = Path(tmp) / name
            d.mkdir()
            path = build(d)
            size = sum(f.stat().st_size for f in (path.rglob("*") if path.is_dir() else [path]) if f.is_file())
            proc = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True,
                                  env={"PYTHONPATH": args.src, "PATH": "/usr/bin:/bin", "SAESCOPE_NO_PROGRESS": "1"},
                                  timeout=600)
            line = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "{}"
            try:
                r = json.loads(line)
            except ValueError:
                r = {"outcome": f"child died (rc {proc.returncode}): {proc.stderr.strip()[-200:]}"}
            rows.append((name, what, size, r))
            print(f"{name:22s} {size:>9d} B  {r.get('seconds', float('nan')):7.3f} s  peak {r.get('peak_mb', 0):7.0f} MB "
                  f"(after imports {r.get('base_mb', 0):5.0f} MB)  {r['outcome'][:100]}", flush=True)
    ok = all(r.get("seconds", 99) < 2 and r.get("peak_mb", 1e9) < 300 and not r["outcome"].startswith("LOADED")
             for _, _, _, r in rows)
    print("all refused in < 2 s and < 300 MB peak RSS" if ok else "TARGET MISSED")


if __name__ == "__main__":
    main()
