"""LoRA for any Flax model built from `nn.Dense` layers, without touching the model's code.

    lora = init_lora(rng, params, LoraConfig(rank=16, alpha=16, targets=(r"attn/(qkv|proj)$",)))
    with lora_applied(lora, cfg, rng=dropout_rng):     # unmerged: y = x W + b + s * drop(x) A B
      out = model.apply({"params": params}, x)
    merged = merge(params, lora, cfg)                    # W + s * A B: same outputs, no extra work

The adapters are a separate pytree mirroring the path of every targeted Dense layer
({"blocks_0": {"attn": {"qkv": {"a": [in, r], "b": [r, out]}}}}), so the base params stay frozen and
only the adapters reach the optimizer. `lora_applied` intercepts the Dense calls of a model applied
as the top-level module (paths are relative to the params tree given to `init_lora`).

Math and initialisation follow PEFT's `lora.Linear`: scale s = alpha / rank (alpha / sqrt(rank) with
`rslora`), A Kaiming-uniform (a = sqrt(5), i.e. U(-1/sqrt(in), 1/sqrt(in))), B zeros, so training
starts from the base model exactly; dropout acts on the adapter's input only.
"""
import contextlib
import dataclasses
import math
import re

import flax.linen as nn
import jax
import jax.numpy as jnp

from aajax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class LoraConfig:
  rank: int = 16
  alpha: float = 16.0
  dropout: float = 0.0
  targets: tuple = (r"attn/(qkv|proj)$",)   # regexes (re.search) over '/'-joined Dense layer paths
  rslora: bool = False

  @property
  def scale(self) -> float:
    return self.alpha / (math.sqrt(self.rank) if self.rslora else self.rank)


def _dense_layers(params, prefix=()):
  """(path tuple, kernel) of every Dense-like layer: a dict holding a 2-D "kernel"."""
  if not isinstance(params, dict):
    return
  kernel = params.get("kernel")
  if kernel is not None and getattr(kernel, "ndim", 0) == 2:
    yield prefix, kernel
  for name in sorted(params):
    if isinstance(params[name], dict):
      yield from _dense_layers(params[name], prefix + (name,))


def target_paths(params, cfg: LoraConfig) -> list:
  patterns = []
  for p in cfg.targets:
    try:
      patterns.append(re.compile(p))
    except re.error as e:
      raise ConfigError(f"bad LoRA target regex {p!r}: {e}") from None
  return [(path, k) for path, k in _dense_layers(params) if any(c.search("/".join(path)) for c in patterns)]


def init_lora(rng, params, cfg: LoraConfig) -> dict:
  """Adapters for every Dense layer of `params` matched by `cfg.targets` (at least one must match)."""
  if cfg.rank < 1:
    raise ConfigError(f"LoRA rank must be >= 1, got {cfg.rank}")
  found = target_paths(params, cfg)
  if not found:
    names = ", ".join("/".join(p) for p, _ in _dense_layers(params)) or "none"
    raise ConfigError(f"LoRA targets {cfg.targets} match no Dense layer; layers: {names}")
  out = {}
  for i, (path, kernel) in enumerate(found):
    fan_in, fan_out = kernel.shape
    bound = 1.0 / math.sqrt(fan_in)
    node = out
    for name in path:
      node = node.setdefault(name, {})
    node["a"] = jax.random.uniform(jax.random.fold_in(rng, i), (fan_in, cfg.rank), jnp.float32, -bound, bound)
    node["b"] = jnp.zeros((cfg.rank, fan_out), jnp.float32)
  return out


def _adapter_at(lora, path):
  node = lora
  for name in path:
    if not isinstance(node, dict) or name not in node:
      return None
    node = node[name]
  return node if isinstance(node, dict) and "a" in node else None


def adapter_paths(lora, prefix=()) -> list:
  if isinstance(lora, dict) and "a" in lora:
    return [prefix]
  return [p for k in sorted(lora) for p in adapter_paths(lora[k], prefix + (k,))] if isinstance(lora, dict) else []


def lora_delta(x, adapter, scale: float):
  a, b = adapter["a"].astype(x.dtype), adapter["b"].astype(x.dtype)
  return ((x @ a) @ b) * jnp.asarray(scale, x.dtype)


@contextlib.contextmanager
def lora_applied(lora, cfg: LoraConfig, rng=None):
  """Within the block, Dense layers with an adapter add s * dropout(x) A B to their output.

  Dropout needs `rng` (no rng: deterministic, as at evaluation). Each layer draws its own mask from
  rng folded with the layer's index in `adapter_paths` order, so a step's randomness is reproducible.
  """
  index = {p: i for i, p in enumerate(adapter_paths(lora))}

  def interceptor(next_fun, args, kwargs, context):
    y = next_fun(*args, **kwargs)
    if context.method_name != "__call__" or not isinstance(context.module, nn.Dense):
      return y
    path = tuple(context.module.path)
    adapter = _adapter_at(lora, path)
    if adapter is None:
      return y
    x = args[0] if args else kwargs["inputs"]
    if cfg.dropout > 0 and rng is not None:
      keep = 1.0 - cfg.dropout
      mask = jax.random.bernoulli(jax.random.fold_in(rng, index[path]), keep, x.shape)
      x = jnp.where(mask, x / keep, 0).astype(x.dtype)
    return y + lora_delta(x, adapter, cfg.scale).astype(y.dtype)

  with nn.intercept_methods(interceptor):
    yield


def merge(params, lora, cfg: LoraConfig):
  """params with each adapted kernel replaced by W + s * A B (for export and fast inference)."""
  def walk(p, node):
    if isinstance(node, dict) and "a" in node:
      kernel = p["kernel"]
      delta = (node["a"].astype(jnp.float32) @ node["b"].astype(jnp.float32)) * cfg.scale
      return {**p, "kernel": (kernel.astype(jnp.float32) + delta).astype(kernel.dtype)}
    return {k: walk(v, node[k]) if k in node else v for k, v in p.items()}
  return walk(params, lora)


def count(tree) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(tree))
