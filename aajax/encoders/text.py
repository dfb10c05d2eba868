"""Text towers: SigLIP (bidirectional, last-token pooling, head with bias) and CLIP (causal, EOT
pooling by argmax of the ids, text_projection without bias). Same block as the vision tower.

Like the vision tower it is split into `embed`, `block`, `final_norm`, `pool`, `project` so that
AA-CLIP can interleave its text adapters and replace the projection.
"""
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from aajax.encoders.config import TextConfig
from aajax.encoders.vit import make_blocks
from aajax.errors import InputError
from aajax.nn.attention import causal_mask
from aajax.nn.layers import layer_norm


class TextTransformer(nn.Module):
  cfg: TextConfig

  def setup(self):
    c, dtype = self.cfg, jnp.dtype(self.cfg.dtype)
    self.token_embedding = nn.Embed(c.vocab_size, c.width, embedding_init=nn.initializers.normal(0.02))
    self.pos_embedding = self.param("pos_embedding", nn.initializers.normal(0.01), (c.max_len, c.width))
    self.layers = make_blocks(c.depth, c.heads, c.mlp_dim, c.act, c.ln_eps, dtype, c.remat, c.remat_policy)
    self.ln_final = layer_norm(c.ln_eps, dtype)
    self.head = nn.Dense(c.out_dim, use_bias=c.proj_bias, dtype=dtype)

  def embed(self, ids):
    c = self.cfg
    if ids.ndim != 2 or ids.shape[1] > c.max_len:
      raise InputError(f"token ids must be [batch, length<= {c.max_len}], got shape {tuple(ids.shape)}")
    x = self.token_embedding(ids).astype(jnp.dtype(c.dtype))
    return x + self.pos_embedding[: ids.shape[1]].astype(x.dtype)[None]

  def mask(self, length: int):
    return causal_mask(length) if self.cfg.causal else None

  def block(self, i: int, x):
    return self.layers[i](x, self.mask(x.shape[1]), "qk")

  def final_norm(self, x):
    return self.ln_final(x)

  def pool(self, x, ids):
    """Pick the sentence token from normed tokens: the last position, or the EOT (largest id)."""
    if self.cfg.pool == "last":
      return x[:, -1]
    eot = jnp.argmax(ids, axis=-1)  # first maximum, like torch.argmax
    return jnp.take_along_axis(x, eot[:, None, None], axis=1)[:, 0]

  def project(self, pooled):
    return self.head(pooled)

  def __call__(self, ids, taps: Sequence[int] = ()):
    """ids [B, L] int -> {"pooled": [B, out_dim], "tokens": normed [B, L, D], "hidden": {layer: ...}}."""
    x = self.embed(ids)
    hidden = {0: x} if 0 in taps else {}
    for i in range(self.cfg.depth):
      x = self.block(i, x)
      if i + 1 in taps:
        hidden[i + 1] = x
    tokens = self.final_norm(x)
    return {"pooled": self.project(self.pool(tokens, ids)), "tokens": tokens, "hidden": hidden}
