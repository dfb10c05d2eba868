"""The text decoder: one definition for Moondream 2, 0.5B and 3 and the Llama / Qwen2 / GPT-2
families (config switches, presets in `families.py`).

Block, `block="parallel"` (Phi style, Moondream): h = norm(x); x = x + Attn(h) + MLP(h).
       `block="sequential"` (Llama, GPT-2):       x = x + Attn(norm(x)); x = x + MLP(norm2(x)).
The norm is LayerNorm or RMSNorm (`norm`); the MLP is fc1 -> GELU(tanh) -> fc2, SwiGLU (`mlp="swiglu"`:
fc1 holds [gate | up], silu(gate) * up -> fc2) or, in Moondream 3's MoE layers, `MoeMlp`. Attention
uses one fused `qkv` projection split as [Q | K | V] (GQA when n_kv_heads < n_heads; Llama's separate
q/k/v projections are concatenated by the converter), rotary embeddings on the first `rotary_dim`
dims of each head (`position="rope"`) or a learned absolute `wpe` table added to the inputs
(`position="learned"`, GPT-2), and an attention mask that is causal except for a bidirectional prefix
(BOS + image tokens). Moondream 3 also scales Q and V per token and per position ("tau", see
`TauScaling`). Biases are per projection switches; `tie_embeddings` computes logits with `wte`.

Parameter names follow Moondream's checkpoint (`wte`, `wpe`, `blocks_i/{ln, ln2, attn/{qkv, proj, tau},
mlp/{fc1, fc2}}`, `post_ln`, `lm_head`) for every family, so the KV cache, LoRA targets
(`attn/(qkv|proj)`, `mlp/fc[12]`) and the jitted steps are the same for all. The KV cache (see
`kv_cache.py`) is passed in and returned.
`__call__` returns a dict: the raw residual stream `hidden` (before `post_ln`: the region heads read
it), the updated `cache` and the MoE `aux_loss`.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from aajax.decoder import kv_cache as kvc
from aajax.decoder.moe import MoeMlp
from aajax.nn.attention import heads_first_attention
from aajax.nn.layers import layer_norm
from aajax.nn.rope import apply_rope
from aajax.vlm.config import TextConfig


def prefix_lm_mask(q_pos, k_pos, prefix_len):
  """[B, T, S] True where query position q may see key position k: causal, plus a full prefix block."""
  q, k = q_pos[:, :, None], k_pos[:, None, :]
  return (k <= q) | ((k < prefix_len) & (q < prefix_len))


def grouped_attention(q, k, v, mask):
  """q [B, T, H, hd]; k, v [B, S, Hkv, hd]; mask [B, T, S] -> [B, T, H, hd]. Softmax in float32.

  The G = H / Hkv query heads that share a key head become G times as many query rows of it, so the
  whole product is one heads-first attention over the Hkv heads."""
  b, t, h, hd = q.shape
  hkv = k.shape[2]
  g = h // hkv
  q = q.reshape(b, t, hkv, g, hd).transpose(0, 2, 1, 3, 4).reshape(b, hkv, t * g, hd)
  rows_mask = jnp.broadcast_to(mask[:, None, :, None, :], (b, 1, t, g, mask.shape[-1]))
  out = heads_first_attention(q, jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2),
                              rows_mask.reshape(b, 1, t * g, mask.shape[-1]))
  return out.reshape(b, hkv, t, g, hd).transpose(0, 2, 1, 3, 4).reshape(b, t, h, hd)


class TauScaling(nn.Module):
  """Moondream 3: Q_h *= tanh(gelu(qkv) . wq_h) + tau_pos_h, V_h likewise with wv; K unscaled.

  tau_pos_h = 0.5 + sigmoid(alpha_h * ln(pos + 1)). Positions are float32 here; the reference casts
  them to bf16 first (730 -> 728), a difference below bf16 resolution of the scale itself.
  """
  n_heads: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, qkv, q, v, positions):
    wq = self.param("wq", nn.initializers.zeros, (qkv.shape[-1], self.n_heads))
    wv = self.param("wv", nn.initializers.zeros, (qkv.shape[-1], self.n_heads))
    alpha = self.param("alpha", nn.initializers.zeros, (self.n_heads,))
    feat = jax.nn.gelu(qkv, approximate=False)
    tok_q = jnp.tanh(feat @ wq.astype(feat.dtype))  # [B, T, H]
    tok_v = jnp.tanh(feat @ wv.astype(feat.dtype))
    logpos = jnp.log(positions.astype(jnp.float32) + 1.0)[..., None]
    tau_pos = 0.5 + jax.nn.sigmoid(alpha.astype(jnp.float32) * logpos)  # [B, T, H]
    scale_q = (tok_q + tau_pos).astype(q.dtype)[..., None]
    scale_v = (tok_v + tau_pos).astype(v.dtype)[..., None]
    return q * scale_q, v * scale_v


def norm_layer(c: TextConfig, name=None):
  if c.norm == "rmsnorm":
    return nn.RMSNorm(epsilon=c.ln_eps, dtype=jnp.dtype(c.dtype), name=name)
  return layer_norm(c.ln_eps, jnp.dtype(c.dtype), name)


class DecoderMlp(nn.Module):
  cfg: TextConfig

  @nn.compact
  def __call__(self, x):
    c, dtype = self.cfg, jnp.dtype(self.cfg.dtype)
    gated = c.mlp == "swiglu"
    h = nn.Dense(2 * c.ff_dim if gated else c.ff_dim, use_bias=c.mlp_bias, dtype=dtype, name="fc1")(x)
    if gated:
      h = jax.nn.silu(h[..., :c.ff_dim]) * h[..., c.ff_dim:]
    else:
      h = jax.nn.gelu(h, approximate=True)
    return nn.Dense(c.dim, use_bias=c.mlp_bias, dtype=dtype, name="fc2")(h)


class DecoderAttention(nn.Module):
  cfg: TextConfig

  @nn.compact
  def __call__(self, h, positions, k_cache=None, v_cache=None, starts=None, prefix_len=0):
    c, dtype = self.cfg, jnp.dtype(self.cfg.dtype)
    b, t, _ = h.shape
    hd, qd, kd = c.head_dim, c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
    qkv = nn.Dense(c.qkv_dim, use_bias=c.qkv_bias, dtype=dtype, name="qkv")(h)
    q = qkv[..., :qd].reshape(b, t, c.n_heads, hd)
    k = qkv[..., qd:qd + kd].reshape(b, t, c.n_kv_heads, hd)
    v = qkv[..., qd + kd:].reshape(b, t, c.n_kv_heads, hd)
    if c.tau:
      q, v = TauScaling(c.n_heads, dtype, name="tau")(qkv, q, v, positions)
    if c.position == "rope":
      q = apply_rope(q, positions, c.rotary_dim, c.rope_theta)
      k = apply_rope(k, positions, c.rotary_dim, c.rope_theta)
    if k_cache is None:  # no cache: attend within the given sequence
      k_pos = positions
    else:
      k_cache, v_cache = kvc.write(k_cache, k, starts), kvc.write(v_cache, v, starts)
      k, v = k_cache.astype(dtype), v_cache.astype(dtype)
      k_pos = jnp.broadcast_to(jnp.arange(k.shape[1], dtype=jnp.int32), (b, k.shape[1]))
    out = grouped_attention(q, k, v, prefix_lm_mask(positions, k_pos, prefix_len))
    out = nn.Dense(c.dim, use_bias=c.proj_bias, dtype=dtype, name="proj")(out.reshape(b, t, qd))
    if c.block_input_lora:   # a Moondream variant's proj pair reads h, not the attention output
      a = self.param("variant_proj_a", nn.initializers.zeros, (h.shape[-1], c.block_input_lora))
      bb = self.param("variant_proj_b", nn.initializers.zeros, (c.block_input_lora, c.dim))
      out = out + (h @ a.astype(dtype)) @ bb.astype(dtype)
    return out, k_cache, v_cache


class DecoderBlock(nn.Module):
  cfg: TextConfig
  moe_layer: bool = False

  @nn.compact
  def __call__(self, x, positions, k_cache=None, v_cache=None, starts=None, prefix_len=0, token_mask=None):
    c, dtype = self.cfg, jnp.dtype(self.cfg.dtype)
    h = norm_layer(c, "ln")(x)
    attn, k_cache, v_cache = DecoderAttention(c, name="attn")(h, positions, k_cache, v_cache, starts, prefix_len)
    if c.block == "sequential":
      x = x + attn
      h = norm_layer(c, "ln2")(x)
    if self.moe_layer:
      mlp, aux = MoeMlp(c.moe, dtype, name="mlp")(h, token_mask)
    else:
      mlp, aux = DecoderMlp(c, name="mlp")(h), jnp.zeros((), jnp.float32)
    if c.block == "sequential":
      return x + mlp, k_cache, v_cache, aux
    return x + attn + mlp, k_cache, v_cache, aux


class TextDecoder(nn.Module):
  cfg: TextConfig

  def setup(self):
    c, dtype = self.cfg, jnp.dtype(self.cfg.dtype)
    self.wte = self.param("wte", nn.initializers.normal(0.02), (c.vocab_size, c.dim))
    if c.position == "learned":
      self.wpe = self.param("wpe", nn.initializers.normal(0.01), (c.max_context, c.dim))
    self.blocks = [DecoderBlock(c, c.is_moe_layer(i)) for i in range(c.n_layers)]  # blocks_0 ...
    self.post_ln = norm_layer(c)
    if not c.tie_embeddings:
      self.lm_head = nn.Dense(c.vocab_size, use_bias=c.lm_head_bias, dtype=dtype)

  def embed(self, tokens):
    return jnp.take(self.wte, tokens, axis=0).astype(jnp.dtype(self.cfg.dtype))

  def logits(self, hidden):
    """Raw hidden -> float32 vocabulary logits (post_ln, then lm_head or the tied embedding)."""
    h = self.post_ln(hidden)
    if self.cfg.tie_embeddings:
      return (h @ self.wte.T.astype(h.dtype)).astype(jnp.float32)
    return self.lm_head(h).astype(jnp.float32)

  def __call__(self, x, cache=None, prefix_len=0, lengths=None, positions=None):
    """x [B, T, dim] input embeddings.

    With a cache, row b's tokens take positions cache.length[b] + t and are written there; only the
    first lengths[b] (default T) are real, the rest right padding. Without a cache, `positions`
    (default 0..T-1) place the tokens and attention stays within x.
    """
    b, t, _ = x.shape
    x = x.astype(jnp.dtype(self.cfg.dtype))
    lengths = jnp.full((b,), t, jnp.int32) if lengths is None else lengths.astype(jnp.int32)
    token_mask = jnp.arange(t)[None, :] < lengths[:, None]
    if cache is not None:
      starts = cache["length"]
      positions = starts[:, None] + jnp.arange(t, dtype=jnp.int32)[None]
    else:
      starts = None
      if positions is None:
        positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    if self.cfg.position == "learned":  # GPT-2: absolute position embeddings join every input embedding
      x = x + jnp.take(self.wpe, positions, axis=0).astype(x.dtype)
    ks, vs, aux = [], [], jnp.zeros((), jnp.float32)
    for i, block in enumerate(self.blocks):
      k_i = None if cache is None else cache["k"][i]
      v_i = None if cache is None else cache["v"][i]
      x, k_i, v_i, aux_i = block(x, positions, k_i, v_i, starts, prefix_len, token_mask)
      ks.append(k_i)
      vs.append(v_i)
      aux = aux + aux_i
    out = {"hidden": x, "aux_loss": aux / max(1, sum(map(self.cfg.is_moe_layer, range(self.cfg.n_layers))))}
    if cache is not None:
      out["cache"] = {"k": tuple(ks), "v": tuple(vs), "length": starts + lengths}
    return out
