"""Decoder families as presets of the one decoder's switches (`TextConfig.block/norm/mlp/position/...`).

    phi    Moondream's block: parallel residual, LayerNorm, GELU(tanh) MLP, partial rotary, biases
    llama  Llama / SmolLM / Mistral: sequential residual, RMSNorm, SwiGLU, full rotary, GQA, no biases
    qwen2  Llama with a bias on the Q, K and V projections
    gpt2   sequential residual, LayerNorm, GELU(tanh) MLP, learned absolute positions, tied lm_head

`text_config(family, **fields)` gives a validated `TextConfig`; `config_from_dict` reads one back from
a model directory's `config.json` (unknown keys and inconsistent switches are `ConfigError`s).
"""
import dataclasses

from aajax.errors import ConfigError
from aajax.vlm.config import MoeConfig, TextConfig

_NO_BIAS = dict(qkv_bias=False, proj_bias=False, mlp_bias=False, lm_head_bias=False)
FAMILIES = {
    "phi": {},
    "llama": dict(block="sequential", norm="rmsnorm", mlp="swiglu", **_NO_BIAS),
    "qwen2": dict(block="sequential", norm="rmsnorm", mlp="swiglu", **{**_NO_BIAS, "qkv_bias": True}),
    "gpt2": dict(block="sequential", position="learned", lm_head_bias=False, tie_embeddings=True),
}
CHOICES = {"block": ("parallel", "sequential"), "norm": ("layernorm", "rmsnorm"),
           "mlp": ("gelu_tanh", "swiglu"), "position": ("rope", "learned")}


def family_fields(family: str) -> dict:
  if family not in FAMILIES:
    raise ConfigError(f"unknown decoder family {family!r}; known: {', '.join(FAMILIES)}")
  return dict(FAMILIES[family])


def validate(t: TextConfig) -> TextConfig:
  problems = [f"{k} {getattr(t, k)!r} is not one of {v}" for k, v in CHOICES.items() if getattr(t, k) not in v]
  if t.dim % t.n_heads or t.n_heads % t.n_kv_heads:
    problems.append(f"dim {t.dim} / heads {t.n_heads} / kv heads {t.n_kv_heads} do not divide")
  if t.position == "rope" and (t.rotary_dim > t.head_dim or t.rotary_dim % 2):
    problems.append(f"rotary_dim {t.rotary_dim} must be even and <= head_dim {t.head_dim}")
  if t.tau and t.n_kv_heads != t.n_heads:
    problems.append("tau scaling needs n_kv_heads == n_heads")
  if problems:
    raise ConfigError("invalid decoder config: " + "; ".join(problems))
  return t


def text_config(family: str = "phi", **fields) -> TextConfig:
  try:
    return validate(TextConfig(**{**family_fields(family), **fields}))
  except TypeError as e:  # an unknown field
    raise ConfigError(f"invalid decoder config: {e}") from None


def config_from_dict(d: dict) -> TextConfig:
  d = dict(d)
  if d.get("moe") is not None:
    d["moe"] = MoeConfig(**d["moe"])
  try:
    return validate(TextConfig(**d))
  except TypeError as e:
    raise ConfigError(f"invalid decoder config: {e}") from None


def to_dict(t: TextConfig) -> dict:
  return dataclasses.asdict(t)
