"""Parameter sharding over the `fsdp` and `expert` mesh axes (ZeRO-3 style), and its use in steps.

Which leaf goes where (`spec_for`), for the trainable params, their optimizer state and the frozen
params alike:
  * an expert weight (path matches `expert_params`, 3 or more dims, leading dim divisible by the
    `expert` axis size) is split on its expert dimension over `expert`;
  * a leaf of at least `fsdp_min_size` elements is split over `fsdp` on its largest remaining
    dimension divisible by the `fsdp` axis size;
  * everything else (biases, norms, small tensors) is replicated.
The rule depends only on a leaf's path and shape, so an optimizer-state leaf (Adam's mu of a
kernel, whose path ends with the kernel's path) gets the spec of its param.

Inside the step (a per-device function under `shard_map`) each device holds only its shards:
  * `gather` all-gathers the shards into full arrays right before the forward pass (inside the
    differentiated function, so the transpose of the gather, a reduce-scatter, brings each device
    the summed gradient of its own shard);
  * `vary` marks the shards "varying" over the axes they are replicated on, so `jax.grad` yields
    per-device gradients (see aajax.train.step on why);
  * `reduce_grads` finishes the average: pmean over the replicated axes, divide by the number of
    devices that shared a shard (the reduce-scatter summed over them).
With every axis but `data` of size 1 all specs are P() and this is plain data parallelism.
"""
import dataclasses
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from aajax.errors import ConfigError
from aajax.train.mesh import EXPERT, FSDP

DEFAULT_EXPERT_PARAMS = r"mlp/fc[12]$"   # the stacked expert weights of aajax.decoder.moe.MoeMlp


@dataclasses.dataclass(frozen=True)
class Rules:
  fsdp_min_size: int = 2 ** 14                # smaller leaves stay replicated (gathers of tiny arrays cost more than they save)
  expert_params: str = DEFAULT_EXPERT_PARAMS  # regex over param paths of [experts, ...] weights


def rules_from_config(config) -> Rules:
  pattern = str(config.get("expert_params", DEFAULT_EXPERT_PARAMS))
  try:
    re.compile(pattern)
  except re.error as e:
    raise ConfigError(f"bad expert_params regex {pattern!r}: {e}") from None
  return Rules(int(config.get("fsdp_min_size", Rules.fsdp_min_size)), pattern)


def spec_for(rules: Rules, mesh, name: str, shape) -> P:
  """The PartitionSpec of one leaf (path `name`, `shape`) on `mesh`."""
  axes = [None] * len(shape)
  n_expert, n_fsdp = mesh.shape.get(EXPERT, 1), mesh.shape.get(FSDP, 1)
  if n_expert > 1 and len(shape) >= 3 and shape[0] % n_expert == 0 and re.search(rules.expert_params, name):
    axes[0] = EXPERT
  if n_fsdp > 1 and math.prod(shape) >= rules.fsdp_min_size:
    free = [d for d in range(len(shape)) if axes[d] is None and shape[d] % n_fsdp == 0]
    if free:
      axes[max(free, key=lambda d: (shape[d], -d))] = FSDP   # largest; the first of equals
  while axes and axes[-1] is None:
    axes.pop()
  return P(*axes)


def tree_specs(rules: Rules, mesh, tree):
  """PartitionSpecs of every leaf of `tree` (arrays or ShapeDtypeStructs)."""
  from aajax.train.optim import path_names
  return jax.tree.map(lambda x, name: spec_for(rules, mesh, name, np.shape(x)), tree, path_names(tree))


def state_specs(rules: Rules, mesh, trainable, tx) -> dict:
  """Specs of the train state {"step", "params", "opt_state", "rng"} for `trainable` and optimizer `tx`."""
  opt_shapes = jax.eval_shape(tx.init, jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), trainable))
  return {"step": P(), "params": tree_specs(rules, mesh, trainable), "opt_state": tree_specs(rules, mesh, opt_shapes),
          "rng": P()}


def replicated_specs(tree):
  return jax.tree.map(lambda _: P(), tree)


def put(mesh, tree, specs):
  """Host (or device) arrays, equal on every process, -> global arrays laid out by `specs`.

  Each device receives only its own slice, so a sharded tree never exists whole on any device.
  """
  def one(x, spec):
    sharding = NamedSharding(mesh, spec)
    if isinstance(x, jax.Array):
      if x.sharding == sharding:
        return x
      # a global array reshards on device; a process-local one (task.init's output) goes through the
      # host, since device_put of it in a multi-process run would check equality across processes
      if not x.is_fully_addressable or jax.process_count() == 1:
        return jax.device_put(x, sharding)
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])
  return jax.tree.map(one, tree, specs)


def sharded_bytes(tree) -> tuple[int, int]:
  """(bytes one device holds, bytes of the whole tree) of a tree of global arrays."""
  local = whole = 0
  for x in jax.tree.leaves(tree):
    whole += x.size * x.dtype.itemsize
    shard = x.sharding.shard_shape(x.shape) if hasattr(x, "sharding") else x.shape
    local += math.prod(shard) * x.dtype.itemsize
  return local, whole


# -- inside shard_map ------------------------------------------------------------------------------

def _spec_axes(spec) -> list[tuple[int, str]]:
  out = []
  for dim, entry in enumerate(spec):
    for axis in (entry if isinstance(entry, tuple) else (entry,)):
      if axis is not None:
        out.append((dim, axis))
  return out


def gather(tree, specs):
  """Shards -> full arrays (all-gather on every sharded dimension)."""
  def one(x, spec):
    for dim, axis in _spec_axes(spec):
      x = jax.lax.all_gather(x, axis, axis=dim, tiled=True)
    return x
  return jax.tree.map(one, tree, specs)


def varying_axes(x) -> frozenset:
  """The mesh axes over which `x` may differ between devices (shard_map's varying manual axes)."""
  aval = jax.typeof(x)
  vma = getattr(aval, "vma", None)
  if vma is None:
    manual = getattr(aval, "manual_axis_type", None)
    vma = manual.varying if manual is not None else ()
  return frozenset(vma)


def vary(tree, axes):
  """Each leaf cast to "varying" over those of `axes` it is not varying over yet."""
  def one(x):
    missing = tuple(a for a in axes if a not in varying_axes(x))
    return jax.lax.pcast(x, missing, to="varying") if missing else x
  return jax.tree.map(one, tree)


def reduce_grads(grads, specs, mesh):
  """Per-device gradients of shards (already summed over the devices sharing each shard by the
  gather's transpose) -> the mean over all devices: pmean over the other axes, / shard group size."""
  def one(g, spec):
    own = [a for _, a in _spec_axes(spec)]
    rest = tuple(a for a in mesh.axis_names if a not in own)
    g = jax.lax.pmean(g, rest) if rest else g
    group = math.prod(mesh.shape[a] for a in own)
    return g / group if group > 1 else g
  return jax.tree.map(one, grads, specs)


def global_norm(tree):
  """L2 norm of a tree whose leaves may be shards: a leaf varying over mesh axes is taken to be
  split over them, so its squared sum is psum-ed there. Outside shard_map it is optax's norm."""
  total = jnp.zeros((), jnp.float32)
  for x in jax.tree.leaves(tree):
    sq = jnp.sum(jnp.square(x.astype(jnp.float32)))
    axes = tuple(sorted(varying_axes(sq)))
    total = total + (jax.lax.psum(sq, axes) if axes else sq)
  return jnp.sqrt(total)
