"""Train and eval steps: per-device functions with explicit collectives, over a (data, expert, fsdp) mesh.

Each step is written as the function ONE device runs on its slice of the batch (the pmap
programming model) and wrapped in `jax.jit(jax.shard_map(...))` over the mesh: the batch is split
over every mesh axis; params, optimizer state and frozen params are replicated, or split over
`fsdp` / `expert` as their PartitionSpecs say (aajax.train.sharding: gathered right before the
forward pass, gradients reduce-scattered back onto the shards). With only the `data` axis larger
than 1 this is plain data parallelism.

Gradients: inside shard_map a replicated (`P()`) input is "invariant" over an axis, and the
transpose of its implicit broadcast already SUMS its gradient over devices; `pmean` of that would be
n times too large. The step therefore first casts the trainable params to "varying"
(`lax.pcast(..., to="varying")`) so `jax.grad` yields the plain per-device gradient, then averages
it with an explicit `lax.pmean`, exactly the old pmap semantics.

The train state is a dict: {"step": int32, "params": trainable, "opt_state": ..., "rng": uint32 key
data}. The per-device key of a step is fold_in(fold_in(rng, step), device index), and micro-batch i
of gradient accumulation folds in i as well, so a resumed run draws the same randomness.
"""
from typing import Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from aajax.errors import ConfigError
from aajax.train import sharding
from aajax.train.mesh import batch_axes

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def compute_dtype(name: str | None):
  if name in (None, "", "float32"):
    return None
  if name not in DTYPES:
    raise ConfigError(f"unknown dtype {name!r}; expected one of {', '.join(DTYPES)}")
  return DTYPES[name]


def cast_floats(tree, dtype):
  """Floating leaves of `tree` cast to `dtype` (None: unchanged). Integer leaves (labels, ids) stay."""
  if dtype is None:
    return tree
  return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def init_train_state(mesh, trainable, tx: optax.GradientTransformation, rng, specs: dict | None = None) -> dict:
  """Train state at step 0 (rng: a PRNG key, typed or raw), laid out by `specs`
  (`sharding.state_specs`; default: replicated). The optimizer state is created in place, shard by shard."""
  if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
    rng = jax.random.key_data(rng)
  shardings = NamedSharding(mesh, P()) if specs is None else jax.tree.map(lambda s: NamedSharding(mesh, s), specs)

  def make(params, rng):
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params), "rng": rng}
  return jax.jit(make, out_shardings=shardings)(trainable, rng)


def _device_key(state, axes):
  key = jax.random.wrap_key_data(state["rng"])
  return jax.random.fold_in(jax.random.fold_in(key, state["step"]), jax.lax.axis_index(axes))


def _as_f32_metrics(loss, metrics):
  metrics = dict(metrics)
  metrics.setdefault("loss", loss)
  return {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}


def make_train_step(loss_fn: Callable, tx: optax.GradientTransformation, mesh, *, accum: int = 1,
                    dtype: str | None = None, donate: bool = True, state_specs: dict | None = None,
                    frozen_specs=None):
  """step(state, frozen, batch) -> (state, metrics), jitted over `mesh`.

  loss_fn(trainable, frozen, batch, rng) -> (loss, metrics) is per-device. With accum > 1 each
  device's slice is split into `accum` micro-batches whose gradients are averaged (the same update as
  the whole slice at once for mean losses, at a fraction of the activation memory). With dtype
  "bfloat16" params and floating batch fields are cast for the forward/backward pass while the
  master params, gradients and optimizer state stay float32. `state_specs` / `frozen_specs` say how
  the state and the frozen params are laid out (`sharding.state_specs` / `sharding.tree_specs`);
  None means replicated.
  """
  cdtype = compute_dtype(dtype)
  accum = int(accum)
  if accum < 1:
    raise ConfigError(f"accum must be >= 1, got {accum}")
  axes = batch_axes(mesh)

  def per_device(state, frozen, batch):
    key = _device_key(state, axes)
    pspecs = state_specs["params"] if state_specs is not None else sharding.replicated_specs(state["params"])
    fspecs = frozen_specs if frozen_specs is not None else sharding.replicated_specs(frozen)

    def loss_and_metrics(shards, frozen, batch, key):
      params = sharding.gather(shards, pspecs)   # full fp32 params: gradients reduce-scatter in fp32
      loss, metrics = loss_fn(cast_floats(params, cdtype), frozen, cast_floats(batch, cdtype), key)
      loss = jnp.asarray(loss, jnp.float32)
      return loss, _as_f32_metrics(loss, metrics)

    grad_fn = jax.value_and_grad(loss_and_metrics, has_aux=True)
    frozen = cast_floats(sharding.gather(frozen, fspecs), cdtype)
    params = sharding.vary(state["params"], axes)   # per-device grads; see module doc
    if accum == 1:
      (_, metrics), grads = grad_fn(params, frozen, batch, key)
    else:
      rows = jax.tree.leaves(batch)[0].shape[0]
      if rows % accum:
        raise ConfigError(f"per-device batch of {rows} rows does not split into accum={accum} micro-batches")
      micro = jax.tree.map(lambda x: x.reshape((accum, rows // accum) + x.shape[1:]), batch)

      def body(carry, inputs):
        i, mb = inputs
        (_, m), g = grad_fn(params, frozen, mb, jax.random.fold_in(key, i))
        return jax.tree.map(jnp.add, carry, (g, m)), None

      (_, m0), g0 = jax.eval_shape(grad_fn, params, frozen, jax.tree.map(lambda x: x[0], micro), key)
      zeros = sharding.vary(jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), (g0, m0)), axes)
      (grads, metrics), _ = jax.lax.scan(body, zeros, (jnp.arange(accum), micro))
      grads, metrics = jax.tree.map(lambda x: x / accum, (grads, metrics))
    grads = sharding.reduce_grads(grads, pspecs, mesh)
    metrics = jax.lax.pmean(metrics, axes)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    new_params = optax.apply_updates(state["params"], updates)
    metrics["grad_norm"] = sharding.global_norm(grads)
    new_state = {"step": state["step"] + 1, "params": new_params, "opt_state": opt_state, "rng": state["rng"]}
    return new_state, metrics

  sspecs = state_specs if state_specs is not None else P()
  fspecs = frozen_specs if frozen_specs is not None else P()
  sharded = jax.shard_map(per_device, mesh=mesh, in_specs=(sspecs, fspecs, P(axes)), out_specs=(sspecs, P()))
  return jax.jit(sharded, donate_argnums=(0,) if donate else ())


def make_eval_step(metric_fn: Callable, mesh, *, dtype: str | None = None, trainable_specs=None, frozen_specs=None):
  """eval_step(trainable, frozen, batch, rng) -> metrics averaged over devices, jitted over `mesh`.

  metric_fn(trainable, frozen, batch, rng) -> {name: scalar} per device (a task's loss_fn wrapped to
  return its metrics works). Shards must be equal in size for the average to be the global mean.
  """
  cdtype = compute_dtype(dtype)
  axes = batch_axes(mesh)

  def per_device(trainable, frozen, batch, rng):
    key = jax.random.fold_in(jax.random.wrap_key_data(rng), jax.lax.axis_index(axes))
    tspecs = trainable_specs if trainable_specs is not None else sharding.replicated_specs(trainable)
    fspecs = frozen_specs if frozen_specs is not None else sharding.replicated_specs(frozen)
    trainable, frozen = sharding.gather(trainable, tspecs), sharding.gather(frozen, fspecs)
    metrics = metric_fn(cast_floats(trainable, cdtype), cast_floats(frozen, cdtype), cast_floats(batch, cdtype), key)
    return jax.lax.pmean({k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}, axes)

  tspecs = trainable_specs if trainable_specs is not None else P()
  fspecs = frozen_specs if frozen_specs is not None else P()
  return jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(tspecs, fspecs, P(axes), P()), out_specs=P()))
