"""The cross-attention baseline: ViT encoder + decoder with cross-attention to the vision tokens.

The encoder-decoder arrangement the prefix VLM is compared against (HF `VisionEncoderDecoderModel`):
    vision tokens -> enc_to_dec (Dense to the decoder width) = context
    per block: x = DecoderBlock(x) (causal self-attention + MLP, the same block as the prefix VLM's
               decoder); x = x + CrossAttn(LN(x), context)
The cross-attention layers (`xattn_i`) and `enc_to_dec` start from scratch and EVERY weight is
trained, the vision tower included. The decoder follows the text config's family (`families.py`).

Generation (`greedy_cached`) runs the tower once per image, projects the cross-attention keys and
values of the vision tokens once (`context_kv`), and keeps the decoder's self-attention KV cache
(`aajax.decoder.kv_cache`): one token per step. `greedy` recomputes the decoder over the whole token
buffer at each step, the uncached reference it must agree with.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from aajax.decoder import kv_cache as kvc
from aajax.decoder.model import DecoderBlock, norm_layer
from aajax.encoders.config import ViTConfig
from aajax.encoders.vit import VisionTransformer
from aajax.nn.attention import merge_heads, softmax_attention, split_heads
from aajax.nn.layers import layer_norm
from aajax.vlm.config import TextConfig


class ContextAttention(nn.Module):
  """Attention from x to the vision tokens (`aajax.nn.attention.MultiHeadAttention`'s parameters),
  whose keys and values can be projected once per image and reused at every decoding step."""
  dim: int
  n_heads: int

  def setup(self):
    self.q_proj = nn.Dense(self.dim)
    self.k_proj = nn.Dense(self.dim)
    self.v_proj = nn.Dense(self.dim)
    self.out_proj = nn.Dense(self.dim)

  def kv(self, context):
    return split_heads(self.k_proj(context), self.n_heads), split_heads(self.v_proj(context), self.n_heads)

  def __call__(self, x, context=None, kv=None):
    k, v = self.kv(context) if kv is None else kv
    return self.out_proj(merge_heads(softmax_attention(split_heads(self.q_proj(x), self.n_heads), k, v)))


class CrossAttention(nn.Module):
  cfg: TextConfig

  def setup(self):
    self.ln = layer_norm(self.cfg.ln_eps)
    self.attn = ContextAttention(self.cfg.dim, self.cfg.n_heads)

  def kv(self, context):
    return self.attn.kv(context)

  def __call__(self, x, context=None, kv=None):
    return x + self.attn(self.ln(x), context, kv)


class XAttnCaptioner(nn.Module):
  vision_cfg: ViTConfig
  text_cfg: TextConfig
  remat: bool = False

  def setup(self):
    c = self.text_cfg
    self.vision = VisionTransformer(self.vision_cfg)
    self.enc_to_dec = nn.Dense(c.dim)
    self.wte = self.param("wte", nn.initializers.normal(0.02), (c.vocab_size, c.dim))
    if c.position == "learned":
      self.wpe = self.param("wpe", nn.initializers.normal(0.01), (c.max_context, c.dim))
    block = nn.remat(DecoderBlock) if self.remat else DecoderBlock
    self.blocks = [block(c) for _ in range(c.n_layers)]
    self.xattn = [CrossAttention(c) for _ in range(c.n_layers)]
    self.post_ln = norm_layer(c)
    if not c.tie_embeddings:
      self.lm_head = nn.Dense(c.vocab_size, use_bias=c.lm_head_bias)

  def encode(self, images):
    return self.enc_to_dec(self.vision(images)["tokens"])

  def decode(self, context, tokens):
    """[B, L, V] float32 logits of the tokens given the encoded context."""
    b, t = tokens.shape
    x = jnp.take(self.wte, tokens, axis=0)
    positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    if self.text_cfg.position == "learned":
      x = x + jnp.take(self.wpe, positions, axis=0)
    for block, xattn in zip(self.blocks, self.xattn):
      x = block(x, positions)[0]
      x = xattn(x, context)
    h = self.post_ln(x)
    if self.text_cfg.tie_embeddings:
      return (h @ self.wte.T).astype(jnp.float32)
    return self.lm_head(h).astype(jnp.float32)

  def context_kv(self, context):
    """Per layer (k, v) [B, N, H, hd] of the cross-attention to the encoded context."""
    return tuple(xattn.kv(context) for xattn in self.xattn)

  def decode_cached(self, context_kv, tokens, cache):
    """tokens [B, T] at positions cache.length + t -> (float32 logits [B, T, V], updated cache)."""
    b, t = tokens.shape
    starts = cache["length"]
    positions = starts[:, None] + jnp.arange(t, dtype=jnp.int32)[None]
    x = jnp.take(self.wte, tokens, axis=0)
    if self.text_cfg.position == "learned":
      x = x + jnp.take(self.wpe, positions, axis=0)
    ks, vs = [], []
    for i, (block, xattn) in enumerate(zip(self.blocks, self.xattn)):
      x, k, v, _ = block(x, positions, cache["k"][i], cache["v"][i], starts, 0)
      x = xattn(x, kv=context_kv[i])
      ks.append(k)
      vs.append(v)
    h = self.post_ln(x)
    logits = h @ self.wte.T if self.text_cfg.tie_embeddings else self.lm_head(h)
    return logits.astype(jnp.float32), {"k": tuple(ks), "v": tuple(vs), "length": starts + t}

  def __call__(self, images, tokens):
    return self.decode(self.encode(images), tokens)


def greedy_cached(model: XAttnCaptioner, params, images, max_new: int, bos_id: int):
  """[B, max_new] greedy tokens with the cross-attention keys/values and the self-attention KV cache."""
  c = model.text_cfg
  apply = lambda *a, **k: model.apply({"params": params}, *a, **k)
  context_kv = apply(apply(images, method=XAttnCaptioner.encode), method=XAttnCaptioner.context_kv)
  b = images.shape[0]
  cache = kvc.init_cache(c.n_layers, b, max_new, c.n_kv_heads, c.head_dim)
  logits, cache = apply(context_kv, jnp.full((b, 1), bos_id, jnp.int32), cache, method=XAttnCaptioner.decode_cached)
  first = jnp.argmax(logits[:, -1], -1).astype(jnp.int32)

  def step(carry, _):
    cache, token = carry
    logits, cache = apply(context_kv, token[:, None], cache, method=XAttnCaptioner.decode_cached)
    return (cache, jnp.argmax(logits[:, -1], -1).astype(jnp.int32)), token

  (_, last), tokens = jax.lax.scan(step, (cache, first), None, length=max_new - 1)
  return jnp.concatenate([tokens.T, last[:, None]], axis=1)


def greedy(model: XAttnCaptioner, params, images, max_new: int, bos_id: int):
  """[B, max_new] greedy tokens, re-running the decoder over the whole buffer at each step."""
  context = model.apply({"params": params}, images, method=XAttnCaptioner.encode)
  b = images.shape[0]
  buffer = jnp.zeros((b, max_new + 1), jnp.int32).at[:, 0].set(bos_id)

  def step(buffer, i):
    logits = model.apply({"params": params}, context, buffer, method=XAttnCaptioner.decode)
    nxt = jnp.argmax(jax.lax.dynamic_index_in_dim(logits, i, axis=1, keepdims=False), -1).astype(jnp.int32)
    return jax.lax.dynamic_update_index_in_dim(buffer, nxt, i + 1, axis=1), None

  buffer, _ = jax.lax.scan(step, buffer, jnp.arange(max_new))
  return buffer[:, 1:]
