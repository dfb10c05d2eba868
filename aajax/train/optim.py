"""Optimizers, learning-rate schedules and freezing, built from the train config.

Freezing works on parameter path names ('/'-joined, e.g. "image_adapters_0/fc/kernel"): leaves whose
name matches any regex of `config.freeze` go through `optax.set_to_zero()` inside
`optax.multi_transform`, so they never move and the optimizer keeps NO state for them (Adam's mu/nu
exist only for the trained leaves, and weight decay cannot reach frozen ones).

Schedules are functions of the optimizer step count (0 for the first update):
  constant     lr
  multistep    lr * gamma ** (number of milestones <= count): torch's MultiStepLR stepped once per
               iteration, i.e. the update with 0-based index m is the first at the decayed rate
  cosine       cosine decay from lr to lr * min_lr_ratio over `steps`
A linear warmup over `warmup_steps` (lr * (count + 1) / warmup_steps) multiplies any of them;
"warmup_cosine" is cosine whose decay starts after the warmup.
"""
import re

import jax
import jax.numpy as jnp
import optax

from aajax.errors import ConfigError

SCHEDULES = ("constant", "multistep", "cosine", "warmup_cosine")
OPTIMIZERS = ("adam", "adamw", "sgd")


def path_names(tree):
  """Same-structure tree of '/'-joined key paths."""
  return jax.tree_util.tree_map_with_path(lambda path, _: _path_name(path), tree)


def _path_name(path) -> str:
  parts = []
  for key in path:
    for attr in ("key", "name", "idx"):
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
    else:
      parts.append(str(key))
  return "/".join(parts)


def freeze_labels(patterns, tree):
  """"frozen" / "trained" per leaf: frozen when any regex in `patterns` matches (re.search) its path."""
  compiled = [re.compile(p) for p in patterns]
  return jax.tree.map(lambda name: "frozen" if any(c.search(name) for c in compiled) else "trained",
                      path_names(tree))


def lr_schedule(config) -> optax.Schedule:
  lr = float(config.lr)
  kind = config.get("schedule", "constant")
  warmup = int(config.get("warmup_steps", 0))
  if kind == "constant":
    base = lambda count: jnp.asarray(lr, jnp.float32)
  elif kind == "multistep":
    milestones = jnp.asarray(sorted(config.get("milestones", ())) or [2**31 - 1], jnp.int32)
    gamma = float(config.get("gamma", 0.1))
    base = lambda count: lr * gamma ** jnp.sum(count >= milestones).astype(jnp.float32)
  elif kind in ("cosine", "warmup_cosine"):
    start = warmup if kind == "warmup_cosine" else 0
    decay_steps = max(int(config.steps) - start, 1)
    floor = float(config.get("min_lr_ratio", 0.0))

    def base(count):
      t = jnp.clip((count - start) / decay_steps, 0.0, 1.0)
      return lr * (floor + (1 - floor) * 0.5 * (1 + jnp.cos(jnp.pi * t)))
  else:
    raise ConfigError(f"unknown schedule {kind!r}; expected one of {', '.join(SCHEDULES)}")
  if warmup <= 0:
    return base
  return lambda count: base(count) * jnp.minimum(1.0, (count + 1) / warmup)


def base_optimizer(config, learning_rate) -> optax.GradientTransformation:
  name = config.get("optimizer", "adam")
  b1, b2, eps = float(config.get("b1", 0.9)), float(config.get("b2", 0.999)), float(config.get("eps", 1e-8))
  wd = float(config.get("weight_decay", 0.0))
  if name == "adam":
    if wd:
      raise ConfigError("weight_decay needs optimizer='adamw' (adam would fold it into the gradient)")
    return optax.adam(learning_rate, b1=b1, b2=b2, eps=eps)
  if name == "adamw":
    return optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=wd)
  if name == "sgd":
    return optax.sgd(learning_rate, momentum=float(config.get("momentum", 0.0)) or None)
  raise ConfigError(f"unknown optimizer {name!r}; expected one of {', '.join(OPTIMIZERS)}")


def with_freezing(tx: optax.GradientTransformation, patterns) -> optax.GradientTransformation:
  patterns = tuple(patterns or ())
  if not patterns:
    return tx
  for p in patterns:
    try:
      re.compile(p)
    except re.error as e:
      raise ConfigError(f"bad freeze regex {p!r}: {e}") from None
  return optax.multi_transform({"trained": tx, "frozen": optax.set_to_zero()},
                               lambda params: freeze_labels(patterns, params))


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
  """optax.clip_by_global_norm whose norm also counts the other devices' shards of fsdp/expert-split
  gradients (inside the step a sharded leaf holds only its shard; `sharding.global_norm`)."""
  from aajax.train.sharding import global_norm

  def update_fn(updates, state, params=None):
    del params
    norm = global_norm(updates)
    scale = jnp.where(norm < max_norm, 1.0, max_norm / norm)
    return jax.tree.map(lambda g: (g * scale).astype(g.dtype), updates), state
  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def from_config(config) -> optax.GradientTransformation:
  """optimizer(lr schedule) [after global-norm clipping], with `config.freeze` applied."""
  tx = base_optimizer(config, lr_schedule(config))
  clip = float(config.get("grad_clip", 0.0))
  if clip > 0:
    tx = optax.chain(clip_by_global_norm(clip), tx)
  return with_freezing(tx, config.get("freeze", ()))


def state_size(opt_state) -> int:
  """Number of floats the optimizer keeps (step counters excluded)."""
  return sum(x.size for x in jax.tree.leaves(opt_state) if jnp.issubdtype(x.dtype, jnp.floating))
