"""Shared fixtures. Everything runs offline: the hub cache lives in a temporary HF_HOME built by the tests."""
from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

# Must happen before anything imports huggingface_hub (it reads these at import time).
_HF_HOME = Path(tempfile.mkdtemp(prefix="saescope-hf-"))
atexit.register(shutil.rmtree, _HF_HOME, ignore_errors=True)
os.environ["HF_HOME"] = str(_HF_HOME)
os.environ["HF_HUB_CACHE"] = str(_HF_HOME / "hub")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["SAESCOPE_NO_PROGRESS"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "scripts"))

from hubcache import add_model_dir  # noqa: E402
from model_zoo import build as build_zoo_model  # noqa: E402
from model_zoo import save_tokenizer as _save_tokenizer  # noqa: E402,F401  (kept for older imports)

torch.set_num_threads(2)
HUB = _HF_HOME / "hub"


@pytest.fixture(scope="session")
def hub_cache() -> Path:
    HUB.mkdir(parents=True, exist_ok=True)
    return HUB


@pytest.fixture(scope="session")
def gpt2_dir(tmp_path_factory) -> Path:
    """A GPT-2-shaped random model (12 layers, d_model 64) saved as an HF directory, with n_ctx in config.json.

    Non-trivial LayerNorm parameters, so that folding/centering differences would show.
    """
    return build_zoo_model("gpt2", tmp_path_factory.mktemp("gpt2"), n_layers=12, seed=0, norm_noise=0.1)


@pytest.fixture(scope="session")
def gpt2_hub(hub_cache, gpt2_dir) -> str:
    """The GPT-2-shaped model published offline as 'gpt2' and 'openai-community/gpt2'. Returns 'gpt2'."""
    add_model_dir(hub_cache, "gpt2", gpt2_dir)
    add_model_dir(hub_cache, "openai-community/gpt2", gpt2_dir)
    return "gpt2"


@pytest.fixture(scope="session")
def pythia_dir(tmp_path_factory) -> Path:
    """A Pythia-shaped (GPT-NeoX, parallel residual, rotary) random model saved as an HF directory."""
    return build_zoo_model("gpt_neox", tmp_path_factory.mktemp("pythia"), n_layers=6, seed=1, norm_noise=0.0)


@pytest.fixture(scope="session")
def pythia_hub(hub_cache, pythia_dir) -> str:
    add_model_dir(hub_cache, "EleutherAI/pythia-70m", pythia_dir)
    return "EleutherAI/pythia-70m"


@pytest.fixture(scope="session")
def saescope_server(gpt2_dir, tmp_path_factory):
    """`saescope serve` on 127.0.0.1 for a random SAE with statistics, shared by the load and browser tests."""
    from report_helpers import start_test_server

    srv = start_test_server(gpt2_dir, tmp_path_factory.mktemp("served"))
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny-model tests: on a shared 2-core machine, thread pools only contend."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
