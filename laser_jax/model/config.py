"""Frozen decoder configuration, presets, and round trips to Hugging Face `config.json`.

One `ModelConfig` describes every supported family (Qwen3, Qwen2/2.5, Llama 3.x); the
family only decides defaults and which HF fields are read and written.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, List, Mapping, Optional, Tuple

import jax

FAMILIES = ("qwen3", "qwen2", "llama")
DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch", "qkv_proj")
ATTENTION_IMPLS = (None, "xla", "cudnn", "xla_right_padded", "splash")
DTYPES = ("float32", "bfloat16", "float16")
# The input of each of the latent view's K-1 soft steps (method/views.py): the paper's expected
# embedding softmax(W_lm h) @ E, or "pause": one learned vector (the Decoder's `latent`
# collection), the same for every step and input (a control for "extra positions alone").
SOFT_TOKENS = ("expected_embedding", "pause")
SIZE_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "head_dim")


def field_problems(fields: Mapping[str, Any]) -> List[Tuple[str, str]]:
    """The rules for ModelConfig values, in one place: (field, problem) for each invalid
    value among `fields` (ModelConfig field names; fields not given are not checked).

    Each problem starts with the offending value, so callers name the field their own way
    (ModelConfig: "remat_policy='x' is not one of ..."; the run config: "model.remat_policy:
    'x' is not one of ..."). The LoRA fields other than lora_rank are checked only with a
    lora_rank > 0.
    """
    problems = []

    def need(ok, name, text):
        if name in fields and not ok(fields[name]):
            problems.append((name, text(fields[name])))

    need(lambda v: v in FAMILIES, "family", lambda v: f"{v!r} is not one of {FAMILIES}")
    for name in SIZE_FIELDS:
        need(lambda v: int(v) >= 1, name, lambda v: f"{v} must be >= 1")
    heads, kv = fields.get("num_attention_heads"), fields.get("num_key_value_heads")
    if heads is not None and kv and int(kv) >= 1 and heads % kv:
        problems.append(("num_attention_heads", f"{heads} is not a multiple of num_key_value_heads={kv}"))
    for name in ("param_dtype", "compute_dtype"):
        need(lambda v: v in DTYPES, name, lambda v: f"{v!r} is not float32, bfloat16 or float16")
    need(lambda v: v in REMAT_POLICIES, "remat_policy", lambda v: f"{v!r} is not one of {REMAT_POLICIES}")
    need(lambda v: v in ATTENTION_IMPLS, "attention_impl", lambda v: f"{v!r} is not one of {ATTENTION_IMPLS}")
    need(lambda v: v in SOFT_TOKENS, "soft_token", lambda v: f"{v!r} is not one of {SOFT_TOKENS}")
    need(lambda v: v >= 0, "lora_rank", lambda v: f"{v} must be >= 0")
    if fields.get("lora_rank", 0) > 0:
        need(lambda v: v and set(v) <= set(DEFAULT_LORA_TARGETS), "lora_targets",
             lambda v: f"{[t for t in v if t not in DEFAULT_LORA_TARGETS] or list(v)} match no projection "
                       f"(choose from {', '.join(DEFAULT_LORA_TARGETS)})")
        need(lambda v: v > 0, "lora_alpha", lambda v: f"{v} must be > 0")
        need(lambda v: 0 <= v < 1, "lora_dropout", lambda v: f"{v} must be in [0, 1)")
    return problems


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """Llama 3 "llama3" RoPE frequency scaling (HF `rope_scaling` / `rope_parameters`)."""

    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of one decoder LLM plus the run-time options that change its compute.

    Architecture fields mirror Hugging Face names. `param_dtype`/`compute_dtype` are
    strings ("float32", "bfloat16", "float16"); `scan_layers=False` unrolls the layer
    loop (params stay stacked on a leading layer axis either way).
    """

    family: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # q/k/v biases (Qwen2 family)
    qk_norm: bool = False  # per-head RMSNorm on q and k (Qwen3 family)
    rope_scaling: Optional[RopeScaling] = None
    max_position_embeddings: int = 32768
    bos_token_id: Optional[int] = None
    eos_token_id: Optional[int] = None
    pad_token_id: Optional[int] = None
    # Run-time options (not part of the HF config).
    param_dtype: str = "float32"
    compute_dtype: str = "float32"
    scan_layers: bool = True
    # The latent view's soft-token steps (one position each) run the layer stack unrolled:
    # a straight-line program per step instead of a loop of L tiny iterations, while the
    # prefill keeps `scan_layers`. Same parameters, same results.
    unroll_soft_steps: bool = False
    # What each soft step is fed (SOFT_TOKENS): "expected_embedding" (the paper's) or "pause"
    # (a learned vector of its own, the variable latent/pause_embedding [D]).
    soft_token: str = "expected_embedding"
    remat_policy: str = "none"
    # Attention kernel: None (JAX picks) or "xla" = masked jax.nn.dot_product_attention;
    # "cudnn" = cuDNN flash attention for full-sequence calls (left padding rotated to
    # right padding, see attention.right_padded_attention), masked XLA for cached calls;
    # "xla_right_padded" = the same rotation with the XLA kernel (testing, CPU);
    # "splash" = the Pallas splash kernel on TPU for full-sequence calls (interpret mode
    # elsewhere, for tests), masked XLA for cached calls.
    attention_impl: Optional[str] = None
    lora_rank: int = 0
    lora_alpha: float = 32.0
    lora_dropout: float = 0.0
    lora_targets: Tuple[str, ...] = DEFAULT_LORA_TARGETS

    def __post_init__(self):
        problems = field_problems(dataclasses.asdict(self))
        if problems:
            raise ValueError("invalid ModelConfig: " + "; ".join(f"{name}={text}" for name, text in problems))

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def num_params(self, include_embeddings: bool = True) -> int:
        """Parameter count of the base model (no LoRA)."""
        d, f, h = self.hidden_size, self.intermediate_size, self.head_dim
        n, k = self.num_attention_heads, self.num_key_value_heads
        attn = d * n * h + 2 * d * k * h + n * h * d
        if self.attention_bias:
            attn += n * h + 2 * k * h
        if self.qk_norm:
            attn += 2 * h
        layer = attn + 3 * d * f + 2 * d
        total = self.num_hidden_layers * layer + d
        if include_embeddings:
            total += self.vocab_size * d * (1 if self.tie_word_embeddings else 2)
        return total


# ---------------------------------------------------------------------------------------
# Hugging Face config.json <-> ModelConfig
# ---------------------------------------------------------------------------------------
_HF_MODEL_TYPE = {"qwen3": "qwen3", "qwen2": "qwen2", "llama": "llama"}
_HF_ARCH = {"qwen3": "Qwen3ForCausalLM", "qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM"}


def _rope_from_hf(hf: Mapping[str, Any]) -> Tuple[float, Optional[RopeScaling]]:
    """Read rope_theta and llama3 scaling from either the 4.x or the 5.x HF layout."""
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or params
    theta = hf.get("rope_theta", params.get("rope_theta", 10000.0))
    rope_type = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    if rope_type in (None, "default"):
        return float(theta), None
    if rope_type != "llama3":
        raise ValueError(f"config.json: rope scaling type {rope_type!r} is not supported "
                         "(supported: default, llama3)")
    return float(theta), RopeScaling(
        factor=float(scaling["factor"]),
        low_freq_factor=float(scaling["low_freq_factor"]),
        high_freq_factor=float(scaling["high_freq_factor"]),
        original_max_position_embeddings=int(scaling["original_max_position_embeddings"]),
    )


def from_hf_config(hf: Mapping[str, Any] | str, **overrides) -> ModelConfig:
    """Build a ModelConfig from an HF config dict, a config.json path, or a model directory.

    `overrides` set run-time options (dtypes, scan, remat, LoRA).
    """
    source = "config"
    if isinstance(hf, (str, os.PathLike)):
        path = os.path.join(hf, "config.json") if os.path.isdir(hf) else str(hf)
        source = path
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: no config.json (is this a Hugging Face model directory?)")
        with open(path) as f:
            try:
                hf = json.load(f)
            except ValueError as e:
                raise ValueError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(hf, dict):
            raise ValueError(f"{path}: not a JSON object")
    model_type = hf.get("model_type")
    family = {"qwen3": "qwen3", "qwen2": "qwen2", "llama": "llama"}.get(model_type)
    if family is None:
        raise ValueError(f"{source}: model_type={model_type!r} is not supported "
                         "(supported: qwen3, qwen2, llama)")
    missing = [k for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                           "num_attention_heads") if k not in hf]
    if missing:
        raise ValueError(f"{source}: missing fields {missing}")
    def number(key, default=None, kind=int, positive=True):
        """hf[key] (default when absent or null, if given) as `kind`; a ValueError names the field."""
        value = hf.get(key)
        if value is None and default is not None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
            raise ValueError(f"{source}: field {key!r} is {value!r}, expected {'an integer' if kind is int else 'a number'}")
        if positive and value <= 0:
            raise ValueError(f"{source}: field {key!r} is {value!r}, expected a positive number")
        return kind(value)

    try:
        theta, scaling = _rope_from_hf(hf)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{source}: fields 'rope_theta' / 'rope_scaling': {type(e).__name__}: {e}") from None
    heads = number("num_attention_heads")
    hidden = number("hidden_size")
    eos = hf.get("eos_token_id")
    if isinstance(eos, list):
        eos = eos[0] if eos else None
    fields = dict(
        family=family,
        vocab_size=number("vocab_size"),
        hidden_size=hidden,
        intermediate_size=number("intermediate_size"),
        num_hidden_layers=number("num_hidden_layers"),
        num_attention_heads=heads,
        num_key_value_heads=number("num_key_value_heads", heads),
        head_dim=number("head_dim", hidden // heads),
        rope_theta=theta,
        rms_norm_eps=number("rms_norm_eps", 1e-6, float),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        attention_bias=bool(hf.get("attention_bias", family == "qwen2")),
        qk_norm=family == "qwen3",
        rope_scaling=scaling,
        max_position_embeddings=number("max_position_embeddings", 32768),
        bos_token_id=hf.get("bos_token_id"),
        eos_token_id=eos,
        pad_token_id=hf.get("pad_token_id"),
    )
    fields.update(overrides)
    return ModelConfig(**fields)


def to_hf_config(cfg: ModelConfig, torch_dtype: str = "bfloat16") -> dict:
    """The HF config.json dict for `cfg` (loadable by transformers' AutoConfig)."""
    hf = {
        "architectures": [_HF_ARCH[cfg.family]],
        "model_type": _HF_MODEL_TYPE[cfg.family],
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "max_position_embeddings": cfg.max_position_embeddings,
        "attention_dropout": 0.0,
        "use_cache": True,
        "torch_dtype": torch_dtype,
        "dtype": torch_dtype,
    }
    if cfg.family in ("qwen3", "llama"):
        hf["attention_bias"] = cfg.attention_bias
    if cfg.family == "llama":
        hf["mlp_bias"] = False
    if cfg.family in ("qwen3", "qwen2"):
        hf["use_sliding_window"] = False
        hf["sliding_window"] = None
        hf["max_window_layers"] = cfg.num_hidden_layers
    # transformers >= 5 reads `rope_parameters`; older releases read rope_theta/rope_scaling.
    rope = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    if cfg.rope_scaling is not None:
        rope.update(rope_type="llama3", **dataclasses.asdict(cfg.rope_scaling))
        hf["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
    hf["rope_parameters"] = rope
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if getattr(cfg, key) is not None:
            hf[key] = getattr(cfg, key)
    return hf


# ---------------------------------------------------------------------------------------
# Presets (published architectures; weights come from the HF checkpoints)
# ---------------------------------------------------------------------------------------
_LLAMA32_SCALING = RopeScaling(factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                               original_max_position_embeddings=8192)
_LLAMA31_SCALING = RopeScaling(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                               original_max_position_embeddings=8192)

_QWEN3 = dict(family="qwen3", vocab_size=151936, head_dim=128, num_key_value_heads=8,
              rope_theta=1_000_000.0, rms_norm_eps=1e-6, qk_norm=True,
              max_position_embeddings=40960, bos_token_id=151643, eos_token_id=151645)
_LLAMA3 = dict(family="llama", vocab_size=128256, num_key_value_heads=8, rope_theta=500_000.0,
               rms_norm_eps=1e-5, max_position_embeddings=131072, bos_token_id=128000)

PRESETS = {
    "qwen3_0_6b": dict(_QWEN3, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                       num_attention_heads=16, tie_word_embeddings=True),
    "qwen3_4b": dict(_QWEN3, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
                     num_attention_heads=32, tie_word_embeddings=True),
    "qwen3_8b": dict(_QWEN3, hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
                     num_attention_heads=32, tie_word_embeddings=False),
    "qwen2_5_7b": dict(family="qwen2", vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                       num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                       head_dim=128, rope_theta=1_000_000.0, rms_norm_eps=1e-6,
                       attention_bias=True, tie_word_embeddings=False,
                       max_position_embeddings=32768, bos_token_id=151643, eos_token_id=151645),
    "llama3_2_1b": dict(_LLAMA3, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                        num_attention_heads=32, head_dim=64, tie_word_embeddings=True,
                        rope_scaling=_LLAMA32_SCALING, eos_token_id=128009),
    "llama3_2_3b": dict(_LLAMA3, hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
                        num_attention_heads=24, head_dim=128, tie_word_embeddings=True,
                        rope_scaling=_LLAMA32_SCALING, eos_token_id=128009),
    "llama3_1_8b": dict(_LLAMA3, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                        num_attention_heads=32, head_dim=128, tie_word_embeddings=False,
                        rope_scaling=_LLAMA31_SCALING, eos_token_id=128009),
    # Tiny architectures for tests and the CPU default (vocab set by the tokenizer).
    "tiny_qwen3": dict(family="qwen3", vocab_size=512, hidden_size=64, intermediate_size=192,
                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       head_dim=16, qk_norm=True, tie_word_embeddings=True,
                       max_position_embeddings=2048),
    "tiny_llama": dict(family="llama", vocab_size=512, hidden_size=64, intermediate_size=192,
                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       head_dim=16, rms_norm_eps=1e-5, rope_theta=500_000.0,
                       rope_scaling=RopeScaling(factor=8.0, low_freq_factor=1.0,
                                                high_freq_factor=4.0,
                                                original_max_position_embeddings=64),
                       max_position_embeddings=2048),
}
PRESET_ALIASES = {"qwen2_5_7b": "qwen2_5_7b", "qwen7b": "qwen2_5_7b", "llama3_8b": "llama3_1_8b"}


def preset(name: str, **overrides) -> ModelConfig:
    """A ModelConfig for a named architecture, e.g. `preset("qwen3_0_6b", compute_dtype="bfloat16")`."""
    key = PRESET_ALIASES.get(name, name)
    if key not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}")
    return ModelConfig(**{**PRESETS[key], **overrides})


def resolve_attention_impl(name: str, compute_dtype: str, backend: Optional[str] = None) -> Optional[str]:
    """`model.attention_impl` -> ModelConfig.attention_impl. "auto" picks cuDNN flash
    attention on a GPU in half precision (measured faster and ~7x less memory for the
    0.6B train step on an H200, bench/NOTES.md), the Pallas splash kernel on a TPU (not
    yet run on one: "xla" is the fallback), JAX's default elsewhere. `backend` defaults
    to this machine's (`jax.default_backend()`)."""
    if name != "auto":
        return name or None
    if backend is None:
        backend = jax.default_backend()
    if backend == "tpu":
        return "splash"
    return "cudnn" if backend == "gpu" and compute_dtype in ("bfloat16", "float16") else None
