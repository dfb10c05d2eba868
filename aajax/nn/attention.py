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


def softmax_attention(q, k, v, mask=None):
  """q [B, Q, H, hd], k and v [B, K, H, hd]; mask broadcastable to [B, H, Q, K] (True = attend)."""
  scale = q.shape[-1] ** -0.5
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) * scale
  if mask is not None:
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
  weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  return jnp.einsum("bhqk,bkhd->bqhd", weights, v)


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
