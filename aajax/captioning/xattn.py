"""The cross-attention baseline: ViT encoder + decoder with cross-attention to the vision tokens.

The encoder-decoder arrangement the prefix VLM is compared against (HF `VisionEncoderDecoderModel`):
    vision tokens -> enc_to_dec (Dense to the decoder width) = context
    per block: x = DecoderBlock(x) (causal self-attention + MLP, the same block as the prefix VLM's
               decoder); x = x + CrossAttn(LN(x), context)
The cross-attention layers (`xattn_i`) and `enc_to_dec` start from scratch and EVERY weight is
trained, the vision tower included. Generation recomputes the decoder over a fixed token buffer each
step (no KV cache); the tower runs once per image.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from aajax.decoder.model import DecoderBlock, norm_layer
from aajax.encoders.config import ViTConfig
from aajax.encoders.vit import VisionTransformer
from aajax.nn.attention import MultiHeadAttention
from aajax.nn.layers import layer_norm
from aajax.vlm.config import TextConfig


class CrossAttention(nn.Module):
  cfg: TextConfig

  @nn.compact
  def __call__(self, x, context):
    h = layer_norm(self.cfg.ln_eps, name="ln")(x)
    return x + MultiHeadAttention(self.cfg.n_heads, name="attn")(h, context=context)


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

  def __call__(self, images, tokens):
    return self.decode(self.encode(images), tokens)


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
