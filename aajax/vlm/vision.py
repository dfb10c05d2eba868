"""Moondream's vision tower: a SigLIP-so400m-shaped ViT over 378 px crops, and the projection.

Names follow the checkpoint (`patch_emb`, `pos_emb`, `blocks_i/{ln1, attn/{qkv, proj}, ln2, mlp}`,
`post_ln`, `proj_mlp`). Unlike the SigLIP towers in `aajax.encoders`, the patch embedding is a Linear
over flattened 588-vectors and attention uses one fused `qkv` projection; the blocks share the
`aajax.nn` layers. No pooling head: `encode` returns the post_ln tokens of every crop, `project`
maps [global tokens | pooled local tokens] to the decoder width.
"""
import flax.linen as nn
import jax.numpy as jnp

from aajax.nn.attention import merge_heads, softmax_attention, split_heads
from aajax.nn.layers import Mlp, layer_norm
from aajax.vlm.config import VisionConfig


def patchify(images, patch: int):
  """NHWC [N, H, W, C] -> [N, (H/p)*(W/p), C*p*p], patches row-major, features (c, py, px) as the
  reference's flattened Conv2d weight expects."""
  n, h, w, c = images.shape
  x = images.reshape(n, h // patch, patch, w // patch, patch, c)
  x = x.transpose(0, 1, 3, 5, 2, 4)  # n, gy, gx, c, py, px
  return x.reshape(n, (h // patch) * (w // patch), c * patch * patch)


class FusedAttention(nn.Module):
  heads: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]
    qkv = nn.Dense(3 * d, dtype=self.dtype, name="qkv")(x)
    q, k, v = (split_heads(t, self.heads) for t in jnp.split(qkv, 3, axis=-1))
    return nn.Dense(d, dtype=self.dtype, name="proj")(merge_heads(softmax_attention(q, k, v)))


class VisionBlock(nn.Module):
  cfg: VisionConfig

  @nn.compact
  def __call__(self, x):
    c, dtype = self.cfg, jnp.dtype(self.cfg.dtype)
    x = x + FusedAttention(c.enc_n_heads, dtype, name="attn")(layer_norm(c.ln_eps, dtype, "ln1")(x))
    return x + Mlp(c.enc_ff_dim, "gelu_tanh", dtype, name="mlp")(layer_norm(c.ln_eps, dtype, "ln2")(x))


class VisionEncoder(nn.Module):
  cfg: VisionConfig

  def setup(self):
    c, dtype = self.cfg, jnp.dtype(self.cfg.dtype)
    self.patch_emb = nn.Dense(c.enc_dim, dtype=dtype)
    self.pos_emb = self.param("pos_emb", nn.initializers.normal(0.02), (1, c.n_tokens, c.enc_dim))
    self.blocks = [VisionBlock(c) for _ in range(c.enc_n_layers)]  # blocks_0 ...
    self.post_ln = layer_norm(c.ln_eps, dtype)
    self.proj_mlp = Mlp(c.proj_inner_dim, "gelu_tanh", dtype, out_dim=c.proj_out_dim)

  def encode(self, crops):
    """crops NHWC [N, crop, crop, 3], normalised to [-1, 1] -> post_ln tokens [N, grid**2, enc_dim]."""
    c = self.cfg
    x = self.patch_emb(patchify(crops.astype(jnp.dtype(c.dtype)), c.enc_patch_size))
    x = x + self.pos_emb.astype(x.dtype)
    for block in self.blocks:
      x = block(x)
    return self.post_ln(x)

  def project(self, global_tokens, pooled_local):
    """[..., grid**2, enc_dim] each -> image tokens [..., grid**2, proj_out_dim] (global first)."""
    return self.proj_mlp(jnp.concatenate([global_tokens, pooled_local], axis=-1))

  def __call__(self, crops):
    tokens = self.encode(crops)
    return self.project(tokens, tokens)
