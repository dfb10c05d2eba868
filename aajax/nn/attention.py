"""Multi-head attention with selectable attention kinds.

Projections are separate `q_proj`, `k_proj`, `v_proj`, `out_proj` Dense layers (HF names; fused
OpenAI/OpenCLIP `in_proj` weights are split by the converters). The softmax is always computed in
float32, as HF eager attention does, whatever the compute dtype.

Attention kinds (the `kind` argument), used by DPAM in AA-CLIP stage 1:
  "qk"        ordinary softmax(q k^T / sqrt(d)) v.
  "vv"        v-v attention over tokens: softmax(v v^T / sqrt(d)) v  (the intended DPAM).
  "vv_batch"  v-v attention taken across the batch axis at each token position: what the released
              AA-CLIP code computes because it feeds (L, N, D) tensors to a (B, N, D) module. At
              batch size 1 it reduces to "value".
  "value"     every token attends only to itself: out_proj(v). The per-token value path used for
              dense features of attention-pooled towers.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any
ATTENTION_KINDS = ("qk", "vv", "vv_batch", "value")


def split_heads(x, num_heads):
  b, n, d = x.shape
  return x.reshape(b, n, num_heads, d // num_heads)


def merge_heads(x):
  b, n, h, hd = x.shape
  return x.reshape(b, n, h * hd)


# Query tiles are used when one (batch, head)'s score block has more elements than this: a tile's
# [tile, K] scores then stay in the per-core L2 cache between the score matmul, the exp and the value
# matmul, instead of streaming the whole [B, H, Q, K] tensor through memory three times.
TILE_MIN_SCORES = 1024 * 1024
TILE_ROWS = 256


def softmax_attention(q, k, v, mask=None):
  """softmax(q k^T / sqrt(hd)) v. q [B, Q, H, hd], k and v [B, K, H, hd]; mask broadcastable to
  [B, H, Q, K] (True = attend). Scores and the softmax are float32 whatever the input dtype.

  Computed heads-first ([B, H, N, hd]: one plain batched matmul per product, which XLA:CPU runs
  several times faster than the same einsum on heads-second operands), with the normalisation
  deferred to the [.., Q, hd] output, and in query tiles when the scores are large (no mask).
  """
  qh, kh, vh = (jnp.swapaxes(t, 1, 2) for t in (q, k, v))
  if mask is None and q.shape[1] * k.shape[1] > TILE_MIN_SCORES:
    out = _tiled_heads_first(qh, kh, vh)
  else:
    out = heads_first_attention(qh, kh, vh, mask)
  return jnp.swapaxes(out, 1, 2)


def heads_first_attention(q, k, v, mask=None):
  """q [..., Q, hd], k and v [..., K, hd] -> [..., Q, hd]; mask broadcastable to [..., Q, K]."""
  # Scaling q (as torch's SDPA does) costs [Q, hd] multiplies; scaling the scores would cost [Q, K]
  # and, on XLA:CPU, a materialised [B, H, Q, K] broadcast of the constant.
  q = q * jnp.asarray(q.shape[-1] ** -0.5, q.dtype)
  s = jnp.einsum("...qd,...kd->...qk", q, k, preferred_element_type=jnp.float32)
  if mask is not None:
    s = jnp.where(mask, s, jnp.finfo(jnp.float32).min)
  m = jax.lax.stop_gradient(s.max(-1, keepdims=True))  # any shift gives the same softmax
  p = jnp.exp(s - m)
  out = jnp.einsum("...qk,...kd->...qd", p.astype(v.dtype), v, preferred_element_type=jnp.float32)
  return (out / p.sum(-1, keepdims=True)).astype(v.dtype)


def _tiled_heads_first(q, k, v):
  """heads_first_attention over query tiles of one (batch, head) at a time, in a loop."""
  b, h, n_q, hd = q.shape
  n_tiles = -(-n_q // TILE_ROWS)
  rows = -(-n_q // n_tiles)
  rows += -rows % 8  # whole SIMD rows
  flat = lambda t: t.reshape(b * h, t.shape[2], hd)
  qf, kf, vf = flat(q), flat(k), flat(v)
  qf = jnp.pad(qf, ((0, 0), (0, n_tiles * rows - n_q), (0, 0))).reshape(b * h * n_tiles, rows, hd)

  def tile(args):
    i, q_tile = args
    return heads_first_attention(q_tile, kf[i // n_tiles], vf[i // n_tiles])

  out = jax.lax.map(tile, (jnp.arange(b * h * n_tiles), qf))
  return out.reshape(b, h, n_tiles * rows, hd)[:, :, :n_q]


def batch_axis_vv_attention(v):
  """v [B, N, H, hd] -> v-v softmax over the batch axis at each token position (AA-CLIP quirk)."""
  vt = jnp.swapaxes(v, 0, 1)  # [N, B, H, hd]: token positions play the role of the batch
  return jnp.swapaxes(softmax_attention(vt, vt, vt), 0, 1)


class MultiHeadAttention(nn.Module):
  """Self-attention (context=None) or cross-attention from x to context."""
  num_heads: int
  dtype: Dtype = jnp.float32
  use_bias: bool = True
  out_kernel_init: Any = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x, context=None, mask=None, kind: str = "qk"):
    if kind not in ATTENTION_KINDS:
      raise ValueError(f"unknown attention kind {kind!r}; expected one of {ATTENTION_KINDS}")
    context = x if context is None else context
    d = x.shape[-1]
    dense = lambda name, **kw: nn.Dense(d, use_bias=self.use_bias, dtype=self.dtype, name=name, **kw)
    heads = lambda t: split_heads(t, self.num_heads)
    if kind == "qk":
      q = heads(dense("q_proj")(x))
      k = heads(dense("k_proj")(context))
      v = heads(dense("v_proj")(context))
      out = softmax_attention(q, k, v, mask)
    else:  # v-v attention reads only the value projection
      v = heads(dense("v_proj")(x))
      if kind == "vv":
        out = softmax_attention(v, v, v, mask)
      elif kind == "vv_batch":
        out = batch_axis_vv_attention(v)
      else:
        out = v
    return dense("out_proj", kernel_init=self.out_kernel_init)(merge_heads(out))


def causal_mask(length: int):
  """[1, 1, L, L] boolean mask, True on and below the diagonal."""
  return jnp.tril(jnp.ones((length, length), dtype=bool))[None, None]
