"""Finding and loading a model: 'tiny' (bundled), a local directory, or a hub id through the huggingface_hub cache.

The one path rule (``resolve``) decides once, at load time, where a name points and records it as ``source``
("bundled", "local" or "hub"), so no other layer re-parses model names: every spelling of an existing directory
(``models/tiny``, ``./models/tiny``, ``models/tiny/``, an absolute or ``~`` path) is the same local model.
"""
from __future__ import annotations

import logging
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from ..errors import InputError, ModelLoadError
from . import preflight
from .hookpoints import FAMILIES, Family

log = logging.getLogger(__name__)

_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
_WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken"]
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
           "half": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float64": torch.float64}
SOURCES = ("bundled", "local", "hub")


@dataclass(frozen=True)
class Resolved:
    """Where a model name points: ``folder`` (an HF directory), the display ``name``, and its ``source``."""

    folder: Path
    name: str
    source: str          # one of SOURCES


def resolve_dtype(dtype) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and dtype.lower().removeprefix("torch.") in _DTYPES:
        return _DTYPES[dtype.lower().removeprefix("torch.")]
    raise InputError(f"unknown dtype {dtype!r}; use one of float32, float16, bfloat16")


def resolve_device(device) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"unknown device {device!r}; use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r} requested but CUDA is not available; use --device cpu")
    return dev


def _has_weights(folder: Path) -> bool:
    return any(any(folder.glob(p)) for p in _WEIGHT_PATTERNS)


def resolve(name_or_path: str) -> Resolved:
    """The one path rule: 'tiny' is the bundled model; an existing directory, however spelled, is a local model;
    a name shaped like a hub id (``org/name``) is looked up in the hub cache; anything else is an error."""
    from ..assets import TINY_MODEL_NAME, tiny_model_dir

    if name_or_path == TINY_MODEL_NAME:
        folder = tiny_model_dir()
        if not (folder / "config.json").is_file() or not _has_weights(folder):
            raise ModelLoadError(f"the bundled tiny model is incomplete: no config.json/model.safetensors in {folder}; "
                                 "reinstall saescope or rebuild it with scripts/build_tiny_model.py")
        return Resolved(folder, TINY_MODEL_NAME, "bundled")
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path} has no config.json: not a Hugging Face model directory")
        if not _has_weights(path):
            raise ModelLoadError(f"{path} has no model weights (model.safetensors or pytorch_model.bin)")
        return Resolved(path.resolve(), str(name_or_path), "local")
    if path.exists():
        raise ModelLoadError(f"{name_or_path} is a file, not a model directory; pass the directory holding config.json")
    looks_like_path = name_or_path.startswith((".", "/", "~")) or os.sep in name_or_path.strip("/").replace("/", "", 1) \
        or not _HUB_ID_RE.match(name_or_path)
    if looks_like_path:
        raise ModelLoadError(f"model directory not found: {name_or_path} (pass an existing local directory, "
                             "a Hugging Face hub id such as gpt2, or 'tiny')")
    return Resolved(hub_snapshot(name_or_path), name_or_path, "hub")


def _hub_offline() -> bool:
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")
    return bool(constants.HF_HUB_OFFLINE) or env


def _cached_snapshot(repo_id: str) -> Path | None:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = Path(snapshot_download(repo_id, allow_patterns=_HUB_PATTERNS + ["pytorch_model*.bin"],
                                        local_files_only=True))
        if (folder / "config.json").is_file() and _has_weights(folder):
            return folder
    except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError):
        pass
    return None


def hub_snapshot(repo_id: str) -> Path:
    """The local snapshot of a hub model: from the cache if present, else downloaded (unless offline)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    folder = _cached_snapshot(repo_id)
    if folder is not None:
        return folder
    if _hub_offline():
        raise ModelLoadError(f"model {repo_id!r} is not available offline (not in the Hugging Face cache and "
                             "HF_HUB_OFFLINE is set); pass a local model directory instead, or go online once")
    try:
        folder = Path(snapshot_download(repo_id, allow_patterns=_HUB_PATTERNS))
        if not any(folder.glob("*.safetensors")):
            folder = Path(snapshot_download(repo_id, allow_patterns=_HUB_PATTERNS + ["pytorch_model*.bin"]))
    except GatedRepoError:
        raise ModelLoadError(f"model {repo_id!r} is gated on the Hugging Face hub; accept its licence and log in "
                             "(huggingface-cli login), or pass a local directory") from None
    except (RepositoryNotFoundError, RevisionNotFoundError):
        raise ModelLoadError(f"unknown model id {repo_id!r}: not found on the Hugging Face hub and not a local "
                             "directory") from None
    except Exception as exc:  # connection errors and the like
        raise ModelLoadError(f"could not download model {repo_id!r} ({_first_line(exc)}); pass a local model "
                             "directory instead") from None
    if not (folder / "config.json").is_file() or not _has_weights(folder):
        raise ModelLoadError(f"hub repo {repo_id!r} has no config.json or model weights; it is not a "
                             "transformers causal LM")
    return folder


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# transformers' loggers whose loading chatter saescope replaces by its own checks (missing weights are an error
# below, the progress bar follows saescope's setting); silenced only for the duration of a load
# (transformers 5.x checks its tensor-parallel plan, and warns about it, when modeling_utils is quieter than WARNING)
_CHATTY = ("transformers.modeling_utils", "transformers.utils.loading_report", "transformers.configuration_utils",
           "transformers.generation.configuration_utils", "transformers.tokenization_utils_base",
           "transformers.distributed.tensor_parallel")


@contextmanager
def quiet_transformers(names: tuple[str, ...] = _CHATTY) -> Iterator[None]:
    """Raise the named transformers loggers to ERROR for the duration of the block, then restore them."""
    loggers = [logging.getLogger(n) for n in names]
    before = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, before):
            lg.setLevel(level)


def _load_weights(auto_cls, folder: Path, torch_dtype: torch.dtype):
    """from_pretrained in ``torch_dtype``; weights missing from the checkpoint are an error, not random values."""
    try:
        with quiet_transformers():
            hf_model, info = auto_cls.from_pretrained(folder, trust_remote_code=False, output_loading_info=True,
                                                      dtype=torch_dtype)
    except Exception as exc:
        raise ModelLoadError(f"cannot load model weights from {folder}: {_first_line(exc)}") from None
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise ModelLoadError(f"{folder}: the weights lack {missing[0]}{more}; they do not match config.json")
    if info.get("unexpected_keys"):
        log.info("%s: ignored %d unexpected weights", folder, len(info["unexpected_keys"]))
    if hf_model.dtype != torch_dtype:      # older transformers know only torch_dtype= and ignore dtype=
        hf_model.to(torch_dtype)
    return hf_model


@dataclass
class Loaded:
    hf_model: object
    tokenizer: object
    family: Family
    where: Resolved


def load(name_or_path, device=None, dtype=None) -> Loaded:
    """Resolve ``name_or_path`` and load its HF causal LM and tokenizer (never with ``trust_remote_code``)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if not isinstance(name_or_path, (str, os.PathLike)) or not str(name_or_path).strip():
        raise ModelLoadError(f"model name must be a hub id, a directory or 'tiny', got {name_or_path!r}")
    torch_dtype = resolve_dtype(dtype)
    dev = resolve_device(device)
    where = resolve(str(name_or_path))
    folder = where.folder
    from ..progress import progress_enabled

    if not progress_enabled():   # transformers' own "Loading weights" bar follows saescope's setting
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    preflight.check(folder, torch.finfo(torch_dtype).bits // 8)
    try:
        config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
    except Exception as exc:
        raise ModelLoadError(f"cannot read {folder / 'config.json'}: {_first_line(exc)}") from None
    family = FAMILIES.get(getattr(config, "model_type", None))
    if family is None:
        raise ModelLoadError(f"unsupported architecture {config.model_type!r} in {folder / 'config.json'} "
                             f"(model_type); supported: {', '.join(sorted(FAMILIES))} "
                             "(add a family in saescope/lm/hookpoints.py)")
    hf_model = _load_weights(AutoModelForCausalLM, folder, torch_dtype)
    try:
        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    except Exception as exc:
        raise ModelLoadError(f"cannot load the tokenizer from {folder}: {_first_line(exc)}") from None
    hf_model.to(dev)
    log.info("loaded %s (%s, %d layers) from %s on %s", where.name, family.name,
             config.get_text_config().num_hidden_layers, folder, dev)
    return Loaded(hf_model, tokenizer, family, where)
