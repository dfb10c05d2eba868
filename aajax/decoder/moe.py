"""Mixture-of-experts MLP of Moondream 3: a linear router, top-k experts, GeGLU-with-offset experts.

Routing follows the reference: the top-k router *logits* are soft-maxed among themselves (float32),
so the k weights sum to one; there is no capacity limit and no token is dropped. Expert e computes
    a, g = split(x @ fc1[e]);  y = gelu_exact(a) * (g + 1) @ fc2[e]
with fc1 [E, dim, 2*inner] and fc2 [E, inner, dim] (the checkpoint stores both "out before in").

Dispatch ("sorted", the default) sorts the N*k (token, expert) assignments by expert, pads each
expert's group to whole blocks and scans over the blocks, so only routed work is done on every
backend. "ragged" uses `jax.lax.ragged_dot` instead (XLA:CPU runs it as E dense matmuls, ~40x
slower there; accelerators may have a grouped kernel). "dense" runs every expert on every token
and masks: E/k times the work, used as a simple reference.

The auxiliary load-balancing loss (Switch Transformer form, extended to top-k) is returned for
training: E * sum_e f_e * P_e, with f_e the share of assignments routed to e and P_e the mean router
probability of e, over real (unmasked) tokens. It is 1.0 for perfectly uniform routing.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from aajax.vlm.config import MoeConfig


def expert_activation(h, inner: int):
  a, g = h[..., :inner], h[..., inner:]
  return jax.nn.gelu(a, approximate=False) * (g + 1)


def route(router_logits, k: int):
  """[N, E] logits -> (weights [N, k] float32 summing to 1, expert ids [N, k])."""
  top_logits, top_ids = jax.lax.top_k(router_logits.astype(jnp.float32), k)
  return jax.nn.softmax(top_logits, axis=-1), top_ids


def block_size_for(assignments: int, num_experts: int) -> int:
  """Rows per expert block: about half the mean group size, a power of two in [1, 128]."""
  target = max(1, assignments // (2 * num_experts))
  return min(128, 1 << (target.bit_length() - 1))


def sorted_experts(x, fc1, fc2, weights, ids):
  """x [N, d]; ids, weights [N, k] -> [N, d]: assignments sorted by expert, run block by block.

  Each expert's group of rows is padded to whole blocks of `bs` rows; a scan runs one block per
  step with that block's expert weights, so the work is about N*k rows (plus at most one partial
  block per expert) instead of the N*E rows of the dense path, and each step reads one expert.
  """
  n, k = ids.shape
  num_experts, inner = fc1.shape[0], fc2.shape[1]
  total = n * k
  bs = block_size_for(total, num_experts)
  n_blocks = min(total, -(-total // bs) + min(num_experts, total))  # static upper bound
  flat_ids = ids.reshape(-1)
  order = jnp.argsort(flat_ids, stable=True)
  sorted_ids = flat_ids[order]
  group_sizes = jnp.bincount(flat_ids, length=num_experts)
  group_start = jnp.cumsum(group_sizes) - group_sizes
  group_blocks = -(-group_sizes // bs)
  block_end = jnp.cumsum(group_blocks)
  padded_pos = (block_end - group_blocks)[sorted_ids] * bs + jnp.arange(total) - group_start[sorted_ids]
  rows = jnp.full((n_blocks * bs,), n, jnp.int32).at[padded_pos].set(order // k)
  block_expert = jnp.minimum(jnp.searchsorted(block_end, jnp.arange(n_blocks), side="right"), num_experts - 1)
  x_blocks = jnp.concatenate([x, jnp.zeros_like(x[:1])])[rows].reshape(n_blocks, bs, -1)

  def one_block(_, blk):
    xb, e = blk
    h = xb @ jax.lax.dynamic_index_in_dim(fc1, e, keepdims=False).astype(x.dtype)
    return None, expert_activation(h, inner) @ jax.lax.dynamic_index_in_dim(fc2, e, keepdims=False).astype(x.dtype)

  _, y = jax.lax.scan(one_block, None, (x_blocks, block_expert))
  y = y.reshape(n_blocks * bs, -1)[padded_pos] * weights.reshape(-1)[order][:, None].astype(x.dtype)
  return jnp.zeros_like(x).at[order // k].add(y)


def ragged_experts(x, fc1, fc2, weights, ids):
  """The same with `jax.lax.ragged_dot` grouped matmuls (fast where the backend has a kernel)."""
  n, k = ids.shape
  num_experts, inner = fc1.shape[0], fc2.shape[1]
  flat_ids = ids.reshape(-1)
  order = jnp.argsort(flat_ids, stable=True)
  token_of = order // k
  group_sizes = jnp.bincount(flat_ids, length=num_experts).astype(jnp.int32)
  h = jax.lax.ragged_dot(x[token_of], fc1.astype(x.dtype), group_sizes)
  y = jax.lax.ragged_dot(expert_activation(h, inner), fc2.astype(x.dtype), group_sizes)
  y = y * weights.reshape(-1)[order][:, None].astype(y.dtype)
  return jnp.zeros_like(x).at[token_of].add(y)


def dense_experts(x, fc1, fc2, weights, ids):
  """Every expert on every token, combined with the (mostly zero) routing weights."""
  num_experts, inner = fc1.shape[0], fc2.shape[1]
  combine = jnp.zeros((x.shape[0], num_experts), jnp.float32)
  combine = combine.at[jnp.arange(x.shape[0])[:, None], ids].add(weights)
  h = expert_activation(jnp.einsum("nd,edf->nef", x, fc1.astype(x.dtype)), inner)
  y = jnp.einsum("nef,efd->ned", h, fc2.astype(x.dtype))
  return jnp.einsum("ned,ne->nd", y, combine.astype(y.dtype))


def load_balancing_loss(router_logits, ids, num_experts: int, token_mask=None):
  probs = jax.nn.softmax(router_logits.astype(jnp.float32), axis=-1)  # [N, E]
  assigned = jax.nn.one_hot(ids, num_experts, dtype=jnp.float32).sum(axis=1)  # [N, E]
  w = jnp.ones(probs.shape[:1], jnp.float32) if token_mask is None else token_mask.astype(jnp.float32)
  denom = jnp.maximum(w.sum(), 1.0)
  f = (assigned * w[:, None]).sum(0) / (denom * ids.shape[1])
  p = (probs * w[:, None]).sum(0) / denom
  return num_experts * jnp.sum(f * p)


DISPATCH = {"sorted": sorted_experts, "ragged": ragged_experts, "dense": dense_experts}


class MoeMlp(nn.Module):
  moe: MoeConfig
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, token_mask=None):
    """x [B, T, d] -> (y [B, T, d], aux load-balancing loss)."""
    m = self.moe
    b, t, d = x.shape
    init = nn.initializers.normal(d ** -0.5)
    fc1 = self.param("fc1", init, (m.num_experts, d, 2 * m.expert_inner_dim))
    fc2 = self.param("fc2", nn.initializers.normal(m.expert_inner_dim ** -0.5), (m.num_experts, m.expert_inner_dim, d))
    flat = x.reshape(b * t, d)
    router_logits = nn.Dense(m.num_experts, dtype=self.dtype, name="router")(flat)
    weights, ids = route(router_logits, m.experts_per_token)
    experts = DISPATCH[m.dispatch]
    y = experts(flat, fc1, fc2, weights, ids)
    mask = None if token_mask is None else token_mask.reshape(b * t)
    aux = load_balancing_loss(router_logits, ids, m.num_experts, mask)
    return y.reshape(b, t, d), aux
