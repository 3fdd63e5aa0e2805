"""The example notebooks (examples/*.ipynb): stored clean, and each runs headless without an error.

Each notebook runs in a fresh kernel of the current interpreter (ipykernel, through nbclient), offline (the
tests' HF_HUB_OFFLINE environment), in a temporary working directory, with a per-cell timeout. Key outputs are
checked: the HTML views of the results appeared, the training plot was drawn.
"""
from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

import nbclient
import nbformat
import pytest

import saescope
from saescope.assets import tiny_model_dir, tiny_sae_dir

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
NOTEBOOKS = sorted(EXAMPLES.glob("*.ipynb"))
CELL_TIMEOUT = 300
MAX_BYTES = 20_000

# notebook -> the views (``ssc-<kind>`` classes of saescope.display) and other outputs it must show
EXPECTED = {
    "01_mind_reading": {"views": {"read", "tokenstats", "trace", "eval"}},
    "02_mind_control": {"views": {"steer"}, "min_views": 11, "text": "samples with 'God'"},
    "03_train_sae": {"views": {"eval", "read"}, "png": True, "text": "decoder orthogonality"},
    "04_neuronpedia": {"views": {"feature"}, "text": "https://www.neuronpedia.org/gpt2-small/6-res-jb/123"},
}


def test_every_notebook_is_listed_and_stored_clean():
    assert [p.stem for p in NOTEBOOKS] == sorted(EXPECTED)
    for path in NOTEBOOKS:
        assert path.stat().st_size < MAX_BYTES, f"{path.name}: {path.stat().st_size} bytes; keep notebooks small"
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        for i, cell in enumerate(nb.cells):
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, f"{path.name} cell {i} has outputs"
        first = next(c for c in nb.cells if c.cell_type == "code").source
        assert 'MODEL, SAE_SPEC = "tiny", "tiny:resid2-topk"' in first and \
            '# MODEL, SAE_SPEC = "gpt2", "gpt2-small-res-jb:blocks.6.hook_resid_pre"' in first, path.name
        raw = json.loads(path.read_text(encoding="utf-8"))
        assert not any("outputs" in c and c["outputs"] for c in raw["cells"])


def _kernel_env(tmp: Path) -> dict:
    """The tests' (offline) environment, with this saescope first on the kernel's path and temporary files in ``tmp``."""
    env = dict(os.environ)
    env["TMPDIR"] = str(tmp)
    src = str(Path(saescope.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([src] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    # One thread: the notebooks' tensors are tiny, and on a busy machine a second OpenMP thread that spins waiting
    # for a core makes each small op many times slower (measured: 100 SAE training steps 1.7 s vs 11-33 s).
    env["OMP_NUM_THREADS"] = "1"
    return env


def _outputs(nb) -> tuple[list[str], list[str], int]:
    html, text, png = [], [], 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.output_type == "stream":
                text.append(out.text)
            data = out.get("data", {})
            html.append(data.get("text/html", ""))
            text.append(data.get("text/plain", ""))
            png += "image/png" in data
    return html, text, png


@pytest.mark.slow
@pytest.mark.skipif(not (tiny_model_dir() / "model.safetensors").is_file() or not (tiny_sae_dir() / "cfg.json").is_file(),
                    reason="the bundled tiny model or its default SAE is not built yet")
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path, monkeypatch):
    # a kernel spec for exactly this interpreter, found through JUPYTER_PATH
    spec = tmp_path / "jupyter" / "kernels" / "saescope-test"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "saescope test", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    work = tmp_path / "work"
    work.mkdir()
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="saescope-test",
                                     resources={"metadata": {"path": str(work)}})
    t0 = time.perf_counter()
    (tmp_path / "tmp").mkdir()
    client.execute(env=_kernel_env(tmp_path / "tmp"))          # raises CellExecutionError (with the traceback) on any error
    seconds = time.perf_counter() - t0
    print(f"{path.name}: {seconds:.1f} s")

    html, text, png = _outputs(nb)
    want = EXPECTED[path.stem]
    views = [h for h in html if 'class="ssc ssc-' in h]
    kinds = {h.split('class="ssc ssc-', 1)[1].split('"', 1)[0] for h in views}
    assert want["views"] <= kinds, f"{path.name}: views {sorted(kinds)}, expected {sorted(want['views'])}"
    assert len(views) >= want.get("min_views", 1)
    if want.get("png"):
        assert png >= 1, f"{path.name}: no plot"
    printed = "".join(text)
    if want.get("text"):
        assert want["text"] in printed, f"{path.name}: {want['text']!r} not printed"
    if path.stem == "02_mind_control":       # the bundled demo's feature steers: more samples name the concept
        base, steered = map(int, re.search(r"baseline (\d+) of 16, steered (\d+) of 16", printed).groups())
        assert steered >= base + 8, printed
    if path.stem == "03_train_sae":          # the monitor printed every 50 steps and the SAE learned something
        ev = [float(v) for v in re.findall(r"explained variance (-?[\d.]+)", printed)]
        assert len(ev) == 6 and ev[-1] > ev[0] and ev[-1] > 0.5, printed
    assert not any(out.output_type == "error" for c in nb.cells for out in c.get("outputs", []))
    assert list(work.iterdir()) == [], f"{path.name} wrote into its working directory: {list(work.iterdir())}"
