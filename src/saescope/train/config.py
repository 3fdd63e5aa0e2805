"""TrainConfig: every knob of an SAE training run, as a frozen dataclass with a JSON round trip.

Defaults work for every architecture on normalised activations (inputs are scaled so that E||x|| = sqrt(d_in) and
the scale is folded back into the saved SAE).

Sparsity. TopK and BatchTopK fix L0 = ``k`` by construction. The penalty architectures (relu, gated, jumprelu)
aim at ``target_l0`` (default: ``k``, i.e. 32) in two ways: (1) a sparsity-aware start, where the encoder bias
(relu), the gate bias (gated) or the thresholds (jumprelu) are set from the first activations so that each latent
fires on about ``target_l0 / d_sae`` of the tokens; (2) a controller that multiplies the sparsity coefficient
(``l1_coefficient`` or ``l0_coefficient``, the starting value) by ``exp(target_l0_gain * log(L0 / target_l0))``
after every step, L0 being a running mean over about 20 steps. ``target_l0 = 0`` turns both off: a fixed
coefficient, linearly warmed up over ``l1_warmup_fraction`` of the run (the coefficient then sets the sparsity).

``total_tokens`` left at ``None`` means one pass over a finite source (an array or a cache) and 2,000,000 tokens
from a stream; more tokens than a finite source holds repeat the data, which the run reports in one warning.
 ``TrainConfig.from_file(path)`` reads the same JSON the run writes to
``<out>/train_config.json``; unknown keys are a one-line ``ConfigError``.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError

ARCHITECTURES = ("relu", "topk", "batchtopk", "jumprelu", "gated", "matryoshka")
# transcoders (``target_hook`` set) train with a sparse selection; see ``transcoder.py``
TRANSCODER_ARCHITECTURES = ("topk", "batchtopk", "matryoshka")


@dataclass(frozen=True)
class TrainConfig:
    architecture: str = "topk"          # relu | topk | batchtopk | jumprelu | gated | matryoshka (BatchTopK)
    d_sae: int | None = None            # number of latents; None -> expansion * d_in
    expansion: int = 16
    k: int = 32                         # topk / batchtopk: active latents per token (batchtopk: on average)
    batch_size: int = 4096              # global batch, in tokens
    total_tokens: int | None = None     # None -> one pass over a finite source, 2,000,000 from a stream
    lr: float = 4e-4
    lr_warmup_steps: int = 0            # linear warm-up from lr/10
    lr_decay_fraction: float = 0.2      # linear decay to 0 over this final fraction of the steps
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    grad_clip: float = 1.0              # max global grad norm; 0 disables
    l1_coefficient: float = 5.0         # relu / gated: L1 of activations weighted by decoder row norms (start value)
    l1_warmup_fraction: float = 0.05    # fixed-coefficient runs (target_l0 = 0): linear warm-up of the penalty
    l0_coefficient: float = 0.01        # jumprelu: L0 penalty (start value; the controller finds its level)
    target_l0: float | None = None      # relu / gated / jumprelu: None -> k; 0 -> fixed coefficient (see docstring)
    target_l0_gain: float = 0.1         # controller step on the log coefficient per unit of log(L0 / target)
    jumprelu_bandwidth: float = 0.5     # jumprelu: straight-through estimator kernel width (normalised units;
                                        # thresholds start near 2, and 0.05 left too little gradient in a short run)
    jumprelu_init_threshold: float = 0.1  # jumprelu with target_l0 = 0 (else thresholds start from the data)
    jumprelu_sparsity_loss: str = "step"  # jumprelu: step (L0 via the STE, DeepMind) | tanh (Anthropic 2025)
    jumprelu_tanh_scale: float = 4.0    # jumprelu tanh loss: sum_i tanh(scale * f_i * ||W_dec_i||)
    jumprelu_threshold_lr_scale: float = 30.0  # jumprelu: the thresholds' lr is lr times this (Adam moves a
                                        # parameter ~lr per step: at 1x a threshold near 2 cannot follow the controller)
    jumprelu_ste_to_input: bool = True  # jumprelu: pseudo-derivatives reach the encoder too (False: DeepMind's)
    aux_k: int | None = None            # topk / batchtopk: latents in the AuxK loss (None -> d_in // 2)
    aux_coefficient: float = 1 / 32
    dead_after_tokens: int = 1_000_000  # a latent is dead when it has not fired for this many tokens
    resample_dead_every: int = 0        # steps between dead-latent resampling (0: off; TopK has AuxK instead)
    b_dec_init: str = "geometric_median"  # geometric_median | mean | zeros
    init_sample_tokens: int = 8192      # sample used for b_dec and the normalisation scale
    normalize_activations: bool = True  # scale inputs to E||x|| = sqrt(d_in); folded back at save
    decoder_init_norm: float | None = None  # None -> 1.0 (unit decoder rows, W_enc = W_dec^T)
    renormalize_decoder: bool | None = None  # unit decoder rows after each step; None -> True for topk/batchtopk
    apply_b_dec_to_input: bool = True
    batchtopk_threshold_momentum: float = 0.99
    ortho_every: int = 100              # steps between decoder-orthogonality measurements (0 disables)
    log_every: int = 10
    checkpoint_every: int = 0           # steps between checkpoints (0: only at the end)
    seed: int = 0
    device: str | None = None
    # where the activations come from (metadata, and the streaming source of the CLI)
    model: str | None = None
    hook: str | None = None
    dataset: str | None = None
    dataset_split: str = "train"
    dataset_column: str = "text"
    context_size: int = 128
    prepend_bos: bool = True
    exclude_special: bool = True
    harvest_batch_size: int = 32        # contexts per LM forward when streaming
    buffer_tokens: int = 65536          # streaming shuffle buffer
    wandb_project: str | None = None
    plots: bool = True
    # Matryoshka BatchTopK: nested prefix widths, each with its own reconstruction loss (None -> d_sae/16, /4, 1)
    matryoshka_widths: tuple | None = None
    # transcoders: predict the activation at ``target_hook`` from the one at ``hook`` (optional linear skip)
    target_hook: str | None = None
    skip: bool = False
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.architecture not in ARCHITECTURES:
            raise ConfigError(f"architecture: unknown value {self.architecture!r}; choose one of {', '.join(ARCHITECTURES)}")
        if self.total_tokens is not None and (not isinstance(self.total_tokens, int) or self.total_tokens <= 0):
            raise ConfigError(f"total_tokens: must be a positive integer, got {self.total_tokens!r}")
        if self.jumprelu_sparsity_loss not in ("step", "tanh"):
            raise ConfigError(f"jumprelu_sparsity_loss: unknown value {self.jumprelu_sparsity_loss!r}; choose step or tanh")
        positive = {"expansion": self.expansion, "k": self.k, "batch_size": self.batch_size, "log_every": self.log_every,
                    "dead_after_tokens": self.dead_after_tokens, "init_sample_tokens": self.init_sample_tokens,
                    "context_size": self.context_size}
        for name, value in positive.items():
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name}: must be a positive integer, got {value!r}")
        if self.d_sae is not None and (not isinstance(self.d_sae, int) or self.d_sae <= 0):
            raise ConfigError(f"d_sae: must be a positive integer, got {self.d_sae!r}")
        for name in ("lr", "l1_coefficient", "l0_coefficient", "jumprelu_bandwidth", "jumprelu_init_threshold",
                     "aux_coefficient", "grad_clip", "lr_decay_fraction", "l1_warmup_fraction", "target_l0_gain",
                     "jumprelu_tanh_scale", "jumprelu_threshold_lr_scale"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"{name}: must be a finite non-negative number, got {value!r}")
        if self.target_l0 is not None and (not isinstance(self.target_l0, (int, float)) or not
                                           math.isfinite(self.target_l0) or self.target_l0 < 0):
            raise ConfigError(f"target_l0: must be a finite number >= 0 (0: fixed coefficient), got {self.target_l0!r}")
        if self.lr <= 0:
            raise ConfigError(f"lr: must be positive, got {self.lr!r}")
        if self.b_dec_init not in ("geometric_median", "mean", "zeros"):
            raise ConfigError(f"b_dec_init: unknown value {self.b_dec_init!r}; choose geometric_median, mean or zeros")
        if self.checkpoint_every < 0 or self.ortho_every < 0 or self.lr_warmup_steps < 0 or self.resample_dead_every < 0:
            raise ConfigError("checkpoint_every, ortho_every, lr_warmup_steps and resample_dead_every must be >= 0")
        from .matryoshka import check_train_options

        check_train_options(self)

    # derived values ---------------------------------------------------------------------------------------
    def resolved_d_sae(self, d_in: int) -> int:
        return int(self.d_sae) if self.d_sae is not None else int(self.expansion) * int(d_in)

    DEFAULT_STREAM_TOKENS = 2_000_000

    def resolved_total_tokens(self, source_tokens: int | None = None) -> int:
        """``total_tokens``, or one pass over a finite source of ``source_tokens`` rows (2M from a stream)."""
        if self.total_tokens is not None:
            return int(self.total_tokens)
        if source_tokens:
            return max(int(source_tokens), self.batch_size)
        return self.DEFAULT_STREAM_TOKENS

    @property
    def total_steps(self) -> int:
        """Steps for ``total_tokens`` (a stream's default if unset; the trainer resolves it against the source)."""
        return max(1, self.resolved_total_tokens() // self.batch_size)

    @property
    def resolved_target_l0(self) -> float | None:
        """The L0 the penalty architectures aim at, or None (TopK/BatchTopK, or a fixed coefficient)."""
        if self.sparse_topk or self.target_l0 == 0:
            return None
        return float(self.k if self.target_l0 is None else self.target_l0)

    @property
    def sparse_topk(self) -> bool:
        return self.architecture in ("topk", "batchtopk", "matryoshka")

    @property
    def batch_level_topk(self) -> bool:
        """BatchTopK selection (its inference threshold is learned): batchtopk and matryoshka."""
        return self.architecture in ("batchtopk", "matryoshka")

    @property
    def resolved_renormalize_decoder(self) -> bool:
        return self.sparse_topk if self.renormalize_decoder is None else bool(self.renormalize_decoder)

    @property
    def resolved_decoder_init_norm(self) -> float:
        if self.decoder_init_norm is not None:
            return float(self.decoder_init_norm)
        # 1.0 for every architecture: with W_enc = W_dec^T at 0.1 (Anthropic's choice for a slow lr), an Adam step
        # of lr on W_enc moves pre-activations by a large fraction of their scale, and L0 runs away from the
        # target faster than the thresholds / biases / coefficient can follow
        return 1.0

    # JSON ------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict, source: str = "config") -> "TrainConfig":
        if not isinstance(d, dict):
            raise ConfigError(f"{source}: expected a JSON object of training options")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"{source}: unknown option {unknown[0]!r}; valid options: {', '.join(sorted(names))}")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = "config") -> "TrainConfig":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{source}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        return cls.from_dict(d, source)

    @classmethod
    def from_file(cls, path) -> "TrainConfig":
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read the config file ({exc.strerror})") from None
        return cls.from_json(text, str(path))

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def same_run_as(self, other: "TrainConfig") -> str | None:
        """Name of the first option that differs in a way that changes the trained weights, or None."""
        ignore = {"checkpoint_every", "log_every", "device", "wandb_project", "plots", "ortho_every"}
        a, b = self.to_dict(), other.to_dict()
        for key in sorted(a):
            if key not in ignore and a[key] != b.get(key):
                return key
        return None
