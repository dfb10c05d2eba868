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

  def block(self, i: int, x, rows=None):
    """Block i; with `rows` ([B] positions) only those tokens come out ([B, 1, D])."""
    if rows is None:
      return self.layers[i](x, self.mask(x.shape[1]), "qk")
    # a pooled token's row of the causal mask: it sees itself and the tokens before it
    mask = (jnp.arange(x.shape[1])[None] <= rows[:, None])[:, None, None] if self.cfg.causal else None
    return self.layers[i](x, mask, "qk", rows)

  def final_norm(self, x):
    return self.ln_final(x)

  def sentence_positions(self, ids):
    """[B] position of the token a sentence is pooled from: the last, or the EOT (largest id)."""
    if self.cfg.pool == "last":
      return jnp.full(ids.shape[:1], ids.shape[1] - 1, jnp.int32)
    return jnp.argmax(ids, axis=-1)  # first maximum, like torch.argmax

  def pool(self, x, ids):
    """Pick the sentence token from normed tokens."""
    return jnp.take_along_axis(x, self.sentence_positions(ids)[:, None, None], axis=1)[:, 0]

  def sentence_embedding(self, ids):
    """The projected pooled embedding alone ([B, out_dim]), the last block run for the pooled token
    only: a twelfth less work for a 12-block tower than `__call__`, which returns every token."""
    x, rows = self.embed(ids), self.sentence_positions(ids)
    for i in range(self.cfg.depth):
      x = self.block(i, x, rows if i == self.cfg.depth - 1 else None)
    return self.project(self.final_norm(x)[:, 0])

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
