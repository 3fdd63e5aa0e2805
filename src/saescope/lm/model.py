"""LanguageModel: a Hugging Face causal LM read and written at TransformerLens-named hook points.

Hooks are plain PyTorch forward (pre-)hooks on the HF modules (see ``hookpoints.py`` for where each name lives),
registered only for the duration of one call, so an unhooked model runs at HF speed. ``run`` stops the forward
pass right after the deepest captured hook. ``generate`` is a small KV-cached loop that applies the active
interventions at every step, prompt and generated tokens alike.
"""
from __future__ import annotations

import inspect
import logging
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

import torch

from ..errors import HookError, InputError, ModelLoadError, NumericsError
from .hookpoints import FAMILIES, Family, HookPoint, all_hook_names, parse_hook, submodule, unavailable_hooks

log = logging.getLogger(__name__)

_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
_WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken"]
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
           "half": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float64": torch.float64}


@dataclass(frozen=True)
class ModelInfo:
    """Shape facts of a loaded model, in TransformerLens's vocabulary."""

    family: str
    n_layers: int
    d_model: int
    n_heads: int
    d_head: int
    d_mlp: int
    d_vocab: int
    n_ctx: int
    default_prepend_bos: bool
    bos_token_id: int | None
    eos_token_id: int | None
    parallel_residual: bool = False

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class HookContext:
    """What an intervention function may want to know besides the activation.

    hook:           the hook name.
    positions:      LongTensor [b, pos], absolute position of each token of the activation in its sequence
                    (padding excluded from the count; padding tokens themselves are -1).
    prompt_lengths: LongTensor [b] during ``generate`` (positions >= prompt_length are generated tokens), else None.
    step:           0 for the prompt pass, n for the pass that processes the n-th generated token.
    """

    hook: str
    positions: torch.Tensor
    prompt_lengths: torch.Tensor | None
    step: int


class Tokens(NamedTuple):
    """A right-padded batch: ids LongTensor [b, pos], attention_mask LongTensor [b, pos] (1 = real token)."""

    ids: torch.Tensor
    attention_mask: torch.Tensor


class _StopForward(Exception):
    """Raised from a hook once the deepest captured activation is in hand (early exit)."""


class _Pass:
    """Mutable state of the forward pass in progress, read by the installed hooks."""

    def __init__(self, captures: dict | None, stop_at: HookPoint | None, positions, prompt_lengths=None,
                 step: int = 0, grad: bool = False):
        self.captures = captures
        self.stop_at = stop_at
        self.positions = positions
        self.prompt_lengths = prompt_lengths
        self.step = step
        self.grad = grad
        self.resid_pre: dict[int, torch.Tensor] = {}


def _wants_context(fn: Callable) -> bool:
    """True when ``fn`` takes a second positional argument (the HookContext)."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return True
    return len(positional) >= 2


def _get_submodule(root: torch.nn.Module, path: str) -> torch.nn.Module:
    return submodule(root, path)   # path may list alternatives "a|b" (hybrid layers)


def _resolve_dtype(dtype) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and dtype.lower().removeprefix("torch.") in _DTYPES:
        return _DTYPES[dtype.lower().removeprefix("torch.")]
    raise InputError(f"unknown dtype {dtype!r}; use one of float32, float16, bfloat16")


def _resolve_device(device) -> torch.device:
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


def _resolve_model_dir(name_or_path: str) -> tuple[Path, str]:
    """Map a name to a local HF directory: 'tiny', an existing directory, or a hub id via the hub cache."""
    from ..assets import TINY_MODEL_NAME, tiny_model_dir

    if name_or_path == TINY_MODEL_NAME:
        folder = tiny_model_dir()
        if not (folder / "config.json").is_file() or not _has_weights(folder):
            raise ModelLoadError(f"the bundled tiny model is incomplete: no config.json/model.safetensors in {folder}; "
                                 "reinstall saescope or rebuild it with scripts/build_tiny_model.py")
        return folder, TINY_MODEL_NAME
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path} has no config.json: not a Hugging Face model directory")
        if not _has_weights(path):
            raise ModelLoadError(f"{path} has no model weights (model.safetensors or pytorch_model.bin)")
        return path, str(name_or_path)
    if path.exists():
        raise ModelLoadError(f"{name_or_path} is a file, not a model directory; pass the directory holding config.json")
    looks_like_path = name_or_path.startswith((".", "/", "~")) or os.sep in name_or_path.strip("/").replace("/", "", 1) \
        or not _HUB_ID_RE.match(name_or_path)
    if looks_like_path:
        raise ModelLoadError(f"model directory not found: {name_or_path} (pass an existing local directory, "
                             "a Hugging Face hub id such as gpt2, or 'tiny')")
    return _hub_snapshot(name_or_path), name_or_path


def _hub_offline() -> bool:
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")
    return bool(constants.HF_HUB_OFFLINE) or env


def _hub_snapshot(repo_id: str) -> Path:
    """The local snapshot of a hub model: from the cache if present, else downloaded (unless offline)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    try:
        folder = Path(snapshot_download(repo_id, allow_patterns=_HUB_PATTERNS + ["pytorch_model*.bin"],
                                        local_files_only=True))
        if (folder / "config.json").is_file() and _has_weights(folder):
            return folder
    except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError):
        pass
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
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"could not download model {repo_id!r} ({first}); pass a local model directory "
                             "instead") from None
    if not (folder / "config.json").is_file() or not _has_weights(folder):
        raise ModelLoadError(f"hub repo {repo_id!r} has no config.json or model weights; it is not a "
                             "transformers causal LM")
    return folder


class LanguageModel:
    """A Hugging Face causal LM with TransformerLens hook names (``blocks.{L}.hook_resid_pre`` ...).

    Attributes: ``name``, ``info`` (ModelInfo), ``hf_model``, ``tokenizer``, ``device``, ``dtype``, ``family``.
    """

    def __init__(self, hf_model, tokenizer, name: str, family: Family):
        self.hf_model = hf_model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.family = family
        cfg = hf_model.config.get_text_config()   # multimodal checkpoints nest the language model's config
        parallel = bool(getattr(cfg, family.parallel_residual_attr, False)) if family.parallel_residual_attr else False
        d_model = int(cfg.hidden_size)
        n_heads = int(cfg.num_attention_heads)
        d_head = int(getattr(cfg, "head_dim", None) or d_model // n_heads)
        d_mlp = (getattr(cfg, family.d_mlp_attr, None) if family.d_mlp_attr else None) \
            or getattr(cfg, "intermediate_size", None) or getattr(cfg, "n_inner", None) or 4 * d_model
        bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else getattr(cfg, "bos_token_id", None)
        eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else getattr(cfg, "eos_token_id", None)
        if isinstance(eos, (list, tuple)):
            eos = eos[0] if eos else None
        self.info = ModelInfo(
            family=family.name, n_layers=int(cfg.num_hidden_layers), d_model=d_model, n_heads=n_heads,
            d_head=d_head, d_mlp=int(d_mlp), d_vocab=int(hf_model.get_output_embeddings().weight.shape[0]),
            n_ctx=int(getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", 2048)),
            default_prepend_bos=family.default_prepend_bos and bos is not None,
            bos_token_id=bos, eos_token_id=eos, parallel_residual=parallel)
        self._layers = _get_submodule(hf_model, family.layers)
        self._unavailable = unavailable_hooks(family, self._layers, name)   # {hook: reason}, e.g. MoE mlp.hook_post
        self._edits: list[tuple[HookPoint, Callable, bool]] = []
        self._pass: _Pass | None = None
        pad = tokenizer.pad_token_id
        self._pad_id = int(pad if pad is not None else (eos if eos is not None else 0))

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, name_or_path: str, device=None, dtype=None) -> "LanguageModel":
        """Load a hub id ("gpt2", "EleutherAI/pythia-70m"), a local HF directory, or "tiny" (the bundled model).

        Hub ids resolve through huggingface_hub's cache (offline works when cached). ``dtype`` defaults to float32.
        ``trust_remote_code`` is never enabled.
        """
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        if not isinstance(name_or_path, (str, os.PathLike)) or not str(name_or_path).strip():
            raise ModelLoadError(f"model name must be a hub id, a directory or 'tiny', got {name_or_path!r}")
        name_or_path = str(name_or_path)
        torch_dtype = _resolve_dtype(dtype)
        dev = _resolve_device(device)
        folder, name = _resolve_model_dir(name_or_path)
        from ..progress import progress_enabled

        if not progress_enabled():   # transformers' own "Loading weights" bar follows saescope's setting
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        try:
            config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
        except Exception as exc:
            raise ModelLoadError(f"cannot read {folder / 'config.json'}: {str(exc).splitlines()[0] if str(exc) else exc!r}") from None
        family = FAMILIES.get(getattr(config, "model_type", None))
        if family is None:
            raise ModelLoadError(f"unsupported architecture {config.model_type!r} in {folder / 'config.json'} "
                                 f"(model_type); supported: {', '.join(sorted(FAMILIES))} "
                                 "(add a family in saescope/lm/hookpoints.py)")
        try:
            hf_model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype, trust_remote_code=False)
        except Exception as exc:
            raise ModelLoadError(f"cannot load model weights from {folder}: "
                                 f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}") from None
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
        except Exception as exc:
            raise ModelLoadError(f"cannot load the tokenizer from {folder}: "
                                 f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}") from None
        hf_model.to(dev)
        log.info("loaded %s (%s, %d layers) from %s on %s", name, family.name, config.get_text_config().num_hidden_layers,
                 folder, dev)
        return cls(hf_model, tokenizer, name, family)

    @property
    def device(self) -> torch.device:
        return next(self.hf_model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.hf_model.parameters()).dtype

    def __repr__(self) -> str:
        i = self.info
        return (f"LanguageModel({self.name!r}, family={i.family}, n_layers={i.n_layers}, d_model={i.d_model}, "
                f"device={self.device}, dtype={self.dtype})")

    # ------------------------------------------------------------------ hook names
    def hook_names(self) -> list[str]:
        """Every valid hook name of this model, in execution order."""
        return all_hook_names(self.info.n_layers, self.info.parallel_residual, self._unavailable)

    def _hook(self, name: str) -> HookPoint:
        return parse_hook(name, self.info.n_layers, self.info.parallel_residual, self._unavailable)

    def hook_width(self, hook: str) -> int:
        """Last-dim size of the activation at ``hook`` (attn.hook_z: d_head, with n_heads before it)."""
        kind = self._hook(hook).kind
        if kind == "attn.hook_z":
            return self.info.d_head
        if kind == "mlp.hook_post":
            return self.info.d_mlp
        return self.info.d_model

    def hook_layer(self, hook: str) -> int:
        """The block index of ``hook``."""
        return self._hook(hook).layer

    # ------------------------------------------------------------------ tokens
    def _prepend(self, prepend_bos: bool | None) -> bool:
        if prepend_bos is None:
            return self.info.default_prepend_bos
        if prepend_bos and self.info.bos_token_id is None:
            raise InputError(f"prepend_bos=True but model {self.name} has no BOS token")
        return bool(prepend_bos)

    def _encode(self, texts: list[str], prepend_bos: bool | None, truncate: bool) -> list[list[int]]:
        for t in texts:
            if not isinstance(t, str):
                raise InputError(f"text must be a string, got {type(t).__name__}")
        bos = self._prepend(prepend_bos)
        enc = self.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
        out = []
        for ids in enc:
            ids = ([self.info.bos_token_id] if bos else []) + list(ids)
            if truncate:
                ids = ids[: self.info.n_ctx]
            out.append(ids)
        return out

    def tokenize(self, text: str | list[str], prepend_bos: bool | None = None, truncate: bool = False) -> Tokens:
        """Text -> Tokens(ids [b, pos], attention_mask [b, pos]), right-padded. ``truncate`` cuts at n_ctx."""
        texts = [text] if isinstance(text, str) else list(text)
        if not texts:
            raise InputError("no text given: pass a string or a non-empty list of strings")
        seqs = self._encode(texts, prepend_bos, truncate)
        width = max(1, max(len(s) for s in seqs))
        ids = torch.full((len(seqs), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
            mask[i, : len(s)] = 1
        return Tokens(ids.to(self.device), mask.to(self.device))

    def to_tokens(self, text: str | list[str], prepend_bos: bool | None = None, truncate: bool = False) -> torch.Tensor:
        """Text -> LongTensor [b, pos] (right-padded with the pad/eos id; use ``tokenize`` for the mask)."""
        return self.tokenize(text, prepend_bos=prepend_bos, truncate=truncate).ids

    def to_str_tokens(self, text_or_ids, prepend_bos: bool | None = None) -> list[str] | list[list[str]]:
        """A string or ids [pos] / [1, pos] -> one string per token; a list of strings or ids [b, pos] -> a list per row."""
        if isinstance(text_or_ids, str):
            ids = self._encode([text_or_ids], prepend_bos, False)[0]
            return [self.tokenizer.decode([i]) for i in ids]
        if isinstance(text_or_ids, (list, tuple)) and text_or_ids and isinstance(text_or_ids[0], str):
            return [self.to_str_tokens(t, prepend_bos) for t in text_or_ids]
        ids = torch.as_tensor(text_or_ids)
        if ids.dim() == 2 and ids.shape[0] == 1:
            ids = ids[0]
        if ids.dim() == 2:
            return [[self.tokenizer.decode([i]) for i in row.tolist()] for row in ids]
        return [self.tokenizer.decode([i]) for i in ids.tolist()]

    def to_string(self, ids) -> str | list[str]:
        """ids [pos] -> str; ids [b, pos] -> list[str]."""
        ids = torch.as_tensor(ids)
        if ids.dim() == 2:
            return [self.tokenizer.decode(row.tolist()) for row in ids]
        return self.tokenizer.decode(ids.tolist())

    def _prepare(self, inputs, prepend_bos, attention_mask) -> tuple[torch.Tensor, torch.Tensor | None]:
        """inputs -> (ids [b, pos] on device, attention mask [b, pos] or None when there is no padding)."""
        if isinstance(inputs, str) or (isinstance(inputs, (list, tuple)) and inputs and isinstance(inputs[0], str)):
            ids, mask = self.tokenize(inputs, prepend_bos=prepend_bos)
            if attention_mask is not None:
                raise InputError("attention_mask is only accepted with token ids, not with text")
        elif isinstance(inputs, torch.Tensor):
            if inputs.dtype not in (torch.long, torch.int, torch.int32, torch.int16, torch.uint8):
                raise InputError(f"token ids must be an integer tensor, got {inputs.dtype}")
            ids = inputs.long().to(self.device)
            if ids.dim() == 1:
                ids = ids[None]
            if ids.dim() != 2:
                raise InputError(f"token ids must have shape [batch, pos], got {list(inputs.shape)}")
            mask = None
            if attention_mask is not None:
                mask = torch.as_tensor(attention_mask).long().to(self.device)
                if mask.dim() == 1:
                    mask = mask[None]
                if mask.shape != ids.shape:
                    raise InputError(f"attention_mask shape {list(mask.shape)} differs from ids shape {list(ids.shape)}")
        else:
            raise InputError(f"inputs must be a string, a list of strings or a LongTensor [batch, pos], "
                             f"got {type(inputs).__name__}")
        if ids.numel() == 0:
            raise InputError("empty input: no tokens to run")
        if ids.shape[1] > self.info.n_ctx:
            raise InputError(f"input has {ids.shape[1]} tokens but model {self.name} has a context of "
                             f"{self.info.n_ctx}; shorten it or tokenize with truncate=True")
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= self.info.d_vocab:
            raise InputError(f"token id {hi if hi >= self.info.d_vocab else lo} out of range for vocabulary size "
                             f"{self.info.d_vocab}")
        if mask is not None and bool(mask.all()):
            mask = None
        return ids, mask

    @staticmethod
    def _positions(ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Absolute positions [b, pos] counting real tokens only; -1 on padding."""
        if mask is None:
            return torch.arange(ids.shape[1], device=ids.device).expand(ids.shape[0], -1)
        pos = mask.cumsum(-1) - 1
        return torch.where(mask.bool(), pos, torch.full_like(pos, -1))

    # ------------------------------------------------------------------ hooks
    def _apply(self, hp: HookPoint, act: torch.Tensor) -> torch.Tensor:
        """Run the active edits at ``hp`` in order, capture, and stop the pass if this was the deepest capture."""
        state = self._pass
        for edit_hp, fn, wants_ctx in self._edits:
            if edit_hp.name != hp.name:
                continue
            if wants_ctx:
                ctx = HookContext(hp.name, state.positions, state.prompt_lengths, state.step)
                out = fn(act, ctx)
            else:
                out = fn(act)
            if out is not None:
                if not isinstance(out, torch.Tensor) or out.shape != act.shape:
                    got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                    raise HookError(f"intervention at {hp.name} returned {got}; it must return a tensor of "
                                    f"shape {list(act.shape)}")
                act = out.to(act.dtype)
        if state.captures is not None and hp.name in state.captures:
            state.captures[hp.name] = act if state.grad else act.detach()
        if state.stop_at is not None and hp.name == state.stop_at.name:
            raise _StopForward
        return act

    def _install(self, points: list[HookPoint]) -> list:
        """Register the PyTorch hooks serving ``points``; returns handles to remove."""
        by_layer: dict[int, dict[str, HookPoint]] = {}
        for hp in points:
            by_layer.setdefault(hp.layer, {})[hp.kind] = hp
        fam = self.family
        handles = []
        for layer, kinds in by_layer.items():
            block = self._layers[layer]
            pre, mid = kinds.get("hook_resid_pre"), kinds.get("hook_resid_mid")
            if pre or mid:
                handles.append(block.register_forward_pre_hook(self._block_pre_hook(layer, pre, mid is not None),
                                                               with_kwargs=True))
            if "attn.hook_z" in kinds:
                handles.append(_get_submodule(block, fam.attn_o_proj).register_forward_pre_hook(
                    self._z_hook(kinds["attn.hook_z"])))
            if "hook_attn_out" in kinds or mid:
                handles.append(_get_submodule(block, fam.attn_out).register_forward_hook(
                    self._attn_out_hook(layer, kinds.get("hook_attn_out"), mid)))
            if "mlp.hook_post" in kinds:
                handles.append(_get_submodule(block, fam.mlp_down).register_forward_pre_hook(
                    self._input_hook(kinds["mlp.hook_post"])))
            if "hook_mlp_out" in kinds:
                handles.append(_get_submodule(block, fam.mlp_out).register_forward_hook(
                    self._output_hook(kinds["hook_mlp_out"])))
            if "hook_resid_post" in kinds:
                handles.append(block.register_forward_hook(self._output_hook(kinds["hook_resid_post"])))
        return handles

    def _block_pre_hook(self, layer: int, pre: HookPoint | None, keep_resid: bool):
        def hook(module, args, kwargs):
            in_args = bool(args)
            x = args[0] if in_args else kwargs["hidden_states"]
            new = self._apply(pre, x) if pre is not None else x
            if keep_resid:
                self._pass.resid_pre[layer] = new
            if new is x:
                return None
            if in_args:
                return (new, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": new}

        return hook

    def _z_hook(self, hp: HookPoint):
        n_heads = self.info.n_heads

        def hook(module, args):
            x = args[0]
            z = x.view(*x.shape[:-1], n_heads, x.shape[-1] // n_heads)
            new = self._apply(hp, z)
            if new is z:
                return None
            return (new.reshape(x.shape), *args[1:])

        return hook

    def _input_hook(self, hp: HookPoint):
        def hook(module, args):
            new = self._apply(hp, args[0])
            return None if new is args[0] else (new, *args[1:])

        return hook

    def _output_hook(self, hp: HookPoint):
        def hook(module, args, output):
            x = output[0] if isinstance(output, tuple) else output
            new = self._apply(hp, x)
            if new is x:
                return None
            return (new, *output[1:]) if isinstance(output, tuple) else new

        return hook

    def _attn_out_hook(self, layer: int, attn: HookPoint | None, mid: HookPoint | None):
        def hook(module, args, output):
            x = output[0] if isinstance(output, tuple) else output
            new = self._apply(attn, x) if attn is not None else x
            if mid is not None:
                resid_pre = self._pass.resid_pre.pop(layer)
                resid_mid = resid_pre + new          # the very sum the block computes next
                edited = self._apply(mid, resid_mid)
                if edited is not resid_mid:      # make the block's own sum equal the edited value
                    new = edited - resid_pre
            if new is x:
                return None
            return (new, *output[1:]) if isinstance(output, tuple) else new

        return hook

    @contextmanager
    def _hooked(self, state: _Pass, extra: list[HookPoint] = ()) -> Iterator[None]:
        points = {hp.name: hp for hp, _, _ in self._edits}
        points.update({hp.name: hp for hp in extra})
        prev = self._pass
        self._pass = state
        handles = self._install(list(points.values()))
        try:
            yield
        finally:
            for h in handles:
                h.remove()
            self._pass = prev

    # ------------------------------------------------------------------ running
    def _model_kwargs(self, ids, mask) -> dict:
        kw = {"input_ids": ids, "use_cache": False}
        if mask is not None:
            kw["attention_mask"] = mask
            kw["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
        return kw

    def run(self, inputs, capture: str | list[str], prepend_bos: bool | None = None, attention_mask=None,
            return_logits: bool = False, grad: bool = False) -> dict[str, torch.Tensor]:
        """Run the model and return ``{hook: activation}`` for each captured hook.

        inputs: str | list[str] | LongTensor [b, pos]. Activations are [b, pos, width] (attn.hook_z:
        [b, pos, n_heads, d_head]); a captured activation is the value after any active intervention at that hook.
        The pass stops right after the deepest captured hook unless ``return_logits`` (then "logits" [b, pos, d_vocab]
        is added). Runs under torch.no_grad() unless ``grad=True``.
        """
        names = [capture] if isinstance(capture, str) else list(capture)
        points = [self._hook(n) for n in names]
        ids, mask = self._prepare(inputs, prepend_bos, attention_mask)
        captures = {hp.name: None for hp in points}
        deepest = max(points, key=lambda hp: hp.order) if points and not return_logits else None
        state = _Pass(captures, deepest, self._positions(ids, mask), grad=grad)
        kwargs = self._model_kwargs(ids, mask)
        logits = None
        with torch.set_grad_enabled(grad), self._hooked(state, points):
            try:
                if return_logits or not points:
                    logits = self.hf_model(**kwargs).logits
                else:
                    self.hf_model.base_model(**kwargs)
            except _StopForward:
                pass
        out = dict(captures)
        if return_logits:
            out["logits"] = logits
        return out

    def __call__(self, inputs, prepend_bos: bool | None = None, attention_mask=None, grad: bool = False) -> torch.Tensor:
        """inputs -> logits [b, pos, d_vocab], with the active interventions applied."""
        ids, mask = self._prepare(inputs, prepend_bos, attention_mask)
        state = _Pass(None, None, self._positions(ids, mask), grad=grad)
        with torch.set_grad_enabled(grad), self._hooked(state):
            return self.hf_model(**self._model_kwargs(ids, mask)).logits

    @contextmanager
    def intervene(self, edits: dict[str, Callable]) -> Iterator[None]:
        """Apply ``{hook: fn}`` to every forward pass inside the block (``lm(...)``, ``run``, ``generate``).

        ``fn(act) -> act`` or ``fn(act, ctx: HookContext) -> act`` (chosen from its signature); returning None
        keeps the (possibly in-place edited) ``act``. The returned tensor is what flows on through the model.
        Nested blocks and several functions at one hook compose in the order they were entered/listed.
        During ``generate`` each KV-cached step shows ``fn`` only the new position (pos = 1);
        ``ctx.positions`` / ``ctx.prompt_lengths`` tell prompt from generated tokens.
        """
        if not isinstance(edits, dict):
            raise InputError(f"intervene() takes a dict {{hook name: function}}, got {type(edits).__name__}")
        added = []
        for name, fn in edits.items():
            hp = self._hook(name)
            if not callable(fn):
                raise InputError(f"intervention for {name} is not callable: {fn!r}")
            added.append((hp, fn, _wants_context(fn)))
        self._edits.extend(added)
        try:
            yield
        finally:
            for item in added:
                for i in range(len(self._edits) - 1, -1, -1):
                    if self._edits[i] is item:
                        del self._edits[i]
                        break

    # ------------------------------------------------------------------ generation
    @staticmethod
    def _pick(logits: torch.Tensor, do_sample: bool, temperature: float, top_p: float,
              gen: torch.Generator | None) -> torch.Tensor:
        """logits [b, d_vocab] -> next token ids [b]."""
        if not do_sample or temperature == 0:
            return logits.argmax(-1)
        probs = torch.softmax(logits.float() / temperature, dim=-1)
        if top_p < 1.0:
            sorted_p, order = probs.sort(dim=-1, descending=True)
            drop = sorted_p.cumsum(-1) - sorted_p > top_p    # keep the smallest prefix whose mass reaches top_p
            sorted_p = sorted_p.masked_fill(drop, 0.0)
            choice = torch.multinomial(sorted_p, 1, generator=gen)
            return order.gather(-1, choice)[:, 0]
        return torch.multinomial(probs, 1, generator=gen)[:, 0]

    @torch.no_grad()
    def generate(self, inputs, max_new_tokens: int = 32, do_sample: bool = False, temperature: float = 1.0,
                 top_p: float = 1.0, seed: int | None = None, prepend_bos: bool | None = None,
                 stop_at_eos: bool = False, return_text: bool = False) -> torch.Tensor | list[str]:
        """Generate with a KV cache; active interventions apply to the prompt pass and to every new token.

        inputs: str | list[str] | LongTensor [b, pos]. Returns LongTensor [b, pos + n_new] (prompts of unequal
        length are left-padded with the pad id) or, with ``return_text``, the decoded continuations (list[str]).
        ``temperature == 0`` or ``do_sample=False`` is greedy; sampling with ``seed`` is reproducible.
        """
        if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise InputError(f"max_new_tokens must be a non-negative integer, got {max_new_tokens!r}")
        if not (isinstance(temperature, (int, float)) and 0 <= temperature < float("inf")):
            raise InputError(f"temperature must be a finite number >= 0, got {temperature!r}")
        if not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
            raise InputError(f"top_p must be in (0, 1], got {top_p!r}")
        ids, mask = self._prepare(inputs, prepend_bos, None)
        b, p = ids.shape
        if mask is not None:   # left-pad for generation: every row's last prompt token sits at column p-1
            lengths = mask.sum(-1)
            shift = p - lengths
            cols = (torch.arange(p, device=ids.device)[None, :] - shift[:, None]) % p
            ids, mask = ids.gather(1, cols), mask.gather(1, cols)
        else:
            lengths = torch.full((b,), p, dtype=torch.long, device=ids.device)
        if p + max_new_tokens > self.info.n_ctx:
            raise InputError(f"prompt ({p} tokens) + max_new_tokens ({max_new_tokens}) exceeds the context of "
                             f"{self.info.n_ctx} tokens of model {self.name}")
        gen = None
        if do_sample and temperature > 0:
            gen = torch.Generator(device=ids.device)
            if seed is not None:
                gen.manual_seed(int(seed))
            else:
                gen.seed()
        from transformers import DynamicCache

        cache = DynamicCache(config=self.hf_model.config)
        positions = self._positions(ids, mask)
        kwargs = {"input_ids": ids, "past_key_values": cache, "use_cache": True, "logits_to_keep": 1}
        if mask is not None:
            kwargs["attention_mask"] = mask
            kwargs["position_ids"] = positions.clamp(min=0)
        state = _Pass(None, None, positions, prompt_lengths=lengths, step=0)
        eos = self.info.eos_token_id
        finished = torch.zeros(b, dtype=torch.bool, device=ids.device)
        new_tokens = []
        with self._hooked(state):
            for step in range(1, max_new_tokens + 1):
                logits = self.hf_model(**kwargs).logits[:, -1]
                if not torch.isfinite(logits).all():
                    raise NumericsError(f"model {self.name} produced NaN/inf logits at generation step {step} "
                                        "(check the interventions)")
                nxt = self._pick(logits, do_sample, temperature, top_p, gen)
                if stop_at_eos and eos is not None:
                    nxt = torch.where(finished, torch.full_like(nxt, self._pad_id), nxt)
                    finished |= nxt == eos
                new_tokens.append(nxt)
                if step == max_new_tokens or (stop_at_eos and bool(finished.all())):
                    break
                state.positions = (lengths + step - 1)[:, None]
                state.step = step
                kwargs = {"input_ids": nxt[:, None], "past_key_values": cache, "use_cache": True}
                if mask is not None:
                    mask = torch.cat([mask, torch.ones((b, 1), dtype=mask.dtype, device=mask.device)], dim=1)
                    kwargs["attention_mask"] = mask
                    kwargs["position_ids"] = state.positions
        out = torch.cat([ids, torch.stack(new_tokens, dim=1)], dim=1) if new_tokens else ids
        if not return_text:
            return out
        texts = []
        for row in out[:, p:].tolist():
            if stop_at_eos and eos is not None and eos in row:
                row = row[: row.index(eos)]
            texts.append(self.tokenizer.decode(row))
        return texts

    # ------------------------------------------------------------------ weights
    def unembed_matrix(self) -> torch.Tensor:
        """W_U [d_model, d_vocab] (a view of the output embedding)."""
        return self.hf_model.get_output_embeddings().weight.T

    def final_norm(self) -> torch.nn.Module:
        """The final LayerNorm/RMSNorm, applied before W_U (for direct logit attribution and the logit lens)."""
        return _get_submodule(self.hf_model, self.family.final_norm)

    @torch.no_grad()
    def attention_value_bias(self, layer: int) -> torch.Tensor:
        """The value bias every head adds to ``blocks.{layer}.attn.hook_z``, through its LayerNorm: ``[n_heads, d_head]``.

        ``b_V + ln_1.b @ W_V``: since attention probabilities sum to 1, ``z`` carries it exactly; TransformerLens's
        default processing folds it into ``b_O``, so its processed ``hook_z`` is the raw one minus this. GPT-2 only.
        """
        if self.family.name != "gpt2":
            raise HookError(f"attention_value_bias is defined for GPT-2-family models, not {self.family.name} ({self.name})")
        if not 0 <= layer < self.info.n_layers:
            raise HookError(f"layer {layer} is out of range for {self.name} ({self.info.n_layers} layers)")
        block = _get_submodule(self.hf_model, self.family.layers)[layer]
        d = self.info.d_model
        bias = block.attn.c_attn.bias[2 * d:] + block.ln_1.bias @ block.attn.c_attn.weight[:, 2 * d:]
        return bias.reshape(self.info.n_heads, self.info.d_head)
