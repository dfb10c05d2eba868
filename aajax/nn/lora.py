"""Low-rank adaptation (LoRA) of any Flax model, on its parameter tree.

A LoRA tree mirrors the params tree down to the adapted Dense layers and holds, for each one,
`{"a": [in, r], "b": [r, out]}`: the layer computes `x W + scale * (x A) B`, scale = alpha / r.
`b` starts at zero, so a fresh LoRA leaves the model unchanged.

Two equal ways to run an adapted model, neither touching the model's code:
  * `merge(params, lora, scale)`: W + scale * A B written into a copy of the params (inference: the
    adapted model costs what the base model costs, and any code taking params runs it);
  * `with unmerged(lora, scale): model.apply(...)`: the low-rank path added to the outputs of the
    matching Dense layers through `flax.linen.intercept_methods` (training: gradients reach only
    A and B, and no weight-sized update is formed).

Which layers: `init_lora(params, patterns, ...)` adapts every 2-D `kernel` whose module path
('/'-joined, e.g. "blocks_3/attn/qkv") matches one of the regexes (re.search). Paths are relative
to the params tree given, i.e. to the module that is applied.
"""
import contextlib
import re

import flax.linen as nn
import jax
import jax.numpy as jnp

from aajax.errors import ConfigError
from aajax.params import flatten, unflatten


def target_paths(params, patterns) -> list[tuple]:
  """Module paths (tuples) of the Dense layers whose '/'-joined path matches any regex."""
  try:
    compiled = [re.compile(p) for p in patterns]
  except re.error as e:
    raise ConfigError(f"bad LoRA target regex: {e}") from None
  out = []
  for path, leaf in flatten(params).items():
    if path[-1] == "kernel" and getattr(leaf, "ndim", 0) == 2:
      module = path[:-1]
      if any(c.search("/".join(module)) for c in compiled):
        out.append(module)
  return sorted(out)


def init_lora(params, patterns, rank: int, rng, dtype=jnp.float32) -> dict:
  """A fresh LoRA tree: A ~ N(0, 1/in) (kaiming-like, as the usual init), B = 0."""
  paths = target_paths(params, patterns)
  if not paths:
    raise ConfigError(f"no Dense kernel matches the LoRA targets {tuple(patterns)}")
  if rank < 1:
    raise ConfigError(f"LoRA rank must be >= 1, got {rank}")
  flat_params = flatten(params)
  flat = {}
  for i, path in enumerate(paths):
    d_in, d_out = flat_params[path + ("kernel",)].shape
    a = jax.random.normal(jax.random.fold_in(rng, i), (d_in, rank), dtype) * d_in ** -0.5
    flat[path + ("a",)] = a
    flat[path + ("b",)] = jnp.zeros((rank, d_out), dtype)
  return unflatten(flat)


def _modules(lora) -> dict:
  """{module path tuple: {"a", "b"}} of a LoRA tree."""
  flat = flatten(lora)
  return {path[:-1]: {"a": flat[path[:-1] + ("a",)], "b": flat[path]} for path in flat if path[-1] == "b"}


def merge(params, lora, scale: float):
  """params with every adapted kernel replaced by W + scale * A B (in the kernel's dtype)."""
  flat = dict(flatten(params))
  for module, ab in _modules(lora).items():
    key = module + ("kernel",)
    if key not in flat:
      raise ConfigError(f"LoRA layer {'/'.join(module)} has no kernel in these params")
    w = flat[key]
    delta = (ab["a"].astype(jnp.float32) @ ab["b"].astype(jnp.float32)) * scale
    flat[key] = (w.astype(jnp.float32) + delta).astype(w.dtype)
  return unflatten(flat)


@contextlib.contextmanager
def unmerged(lora, scale: float):
  """Within the block, applying a module adds scale * (x A) B to its matching Dense outputs."""
  table = _modules(lora)

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name != "__call__" or not isinstance(context.module, nn.Dense):
      return out
    ab = table.get(tuple(context.module.path))
    if ab is None:
      return out
    x = args[0]
    low = (x @ ab["a"].astype(x.dtype)) @ ab["b"].astype(x.dtype)
    return out + (scale * low).astype(out.dtype)

  with nn.intercept_methods(interceptor):
    yield


def num_params(lora) -> int:
  return sum(x.size for x in jax.tree.leaves(lora))
