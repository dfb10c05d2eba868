"""The ViT family: SigLIP and CLIP vision towers, and the pre-LN encoder block they share.

The tower is written as a few methods (`embed`, `block`, `final_norm`, `pool`) composed by
`__call__`, so that a model built on top of it (AA-CLIP adapters, Moondream's crop encoder) can run
the same blocks with its own modules interleaved, without hooks. `__call__` returns a dict of
intermediates: the pooled embedding, the final normed tokens and the hidden states of any requested
layers (1-based block outputs, 0 = the input of the first block, as HF `hidden_states`).
"""
from typing import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from aajax.encoders.config import ViTConfig
from aajax.errors import ConfigError, InputError
from aajax.nn.attention import MultiHeadAttention
from aajax.nn.layers import Mlp, layer_norm
from aajax.nn.resize import resize_2d


class EncoderBlock(nn.Module):
  """x + attn(ln1(x)); x + mlp(ln2(x))."""
  heads: int
  mlp_dim: int
  act: str
  ln_eps: float
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask=None, kind: str = "qk", rows=None):
    """With `rows` ([B] positions) only those tokens' outputs are computed, [B, 1, D]: they still
    attend to every token, but the residual and the MLP run on them alone (a sentence embedding's
    last block needs nothing else). Query-key attention only: the v-v kinds have no separate queries."""
    if rows is not None and kind != "qk":
      raise ValueError(f"rows= needs query-key attention, got kind {kind!r}")
    h = layer_norm(self.ln_eps, self.dtype, "ln1")(x)
    if rows is None:
      x = x + MultiHeadAttention(self.heads, self.dtype, name="attn")(h, mask=mask, kind=kind)
    else:
      x, q = (jnp.take_along_axis(t, rows[:, None, None], axis=1) for t in (x, h))
      x = x + MultiHeadAttention(self.heads, self.dtype, name="attn")(q, h, mask=mask, kind=kind)
    h = layer_norm(self.ln_eps, self.dtype, "ln2")(x)
    return x + Mlp(self.mlp_dim, self.act, self.dtype, name="mlp")(h)


# What a rematerialised block keeps from its forward pass for the backward pass:
#   full           only its input; everything is recomputed (least memory)
#   dots           every matmul output; only element-wise ops are recomputed
#   dots_no_batch  the weight matmuls' outputs, not the attention score/value products, whose size
#                  grows with the square of the tokens (the usual transformer choice)
REMAT_POLICIES = {
    "full": None,
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def make_blocks(depth, heads, mlp_dim, act, ln_eps, dtype, remat, remat_policy="full"):
  if remat and remat_policy not in REMAT_POLICIES:
    raise ConfigError(f"remat_policy {remat_policy!r} unknown; expected one of {', '.join(REMAT_POLICIES)}")
  # static_argnums counts `self`: 3 is `kind`, a Python string.
  cls = nn.remat(EncoderBlock, static_argnums=(3,), policy=REMAT_POLICIES[remat_policy]) if remat else EncoderBlock
  return [cls(heads, mlp_dim, act, ln_eps, dtype, name=f"layers_{i}") for i in range(depth)]


class MAPHead(nn.Module):
  """SigLIP multihead attention pooling: a learned probe attends to the tokens, then a residual MLP."""
  width: int
  heads: int
  mlp_dim: int
  ln_eps: float
  dtype: jnp.dtype = jnp.float32

  def setup(self):
    self.probe = self.param("probe", nn.initializers.xavier_uniform(), (1, 1, self.width))
    self.attn = MultiHeadAttention(self.heads, self.dtype)
    self.ln = layer_norm(self.ln_eps, self.dtype)
    self.mlp = Mlp(self.mlp_dim, "gelu_tanh", self.dtype)

  def __call__(self, x):
    probe = jnp.broadcast_to(self.probe.astype(x.dtype), (x.shape[0], 1, self.width))
    y = self.attn(probe, context=x)
    return (y + self.mlp(self.ln(y)))[:, 0]

  def token_values(self, x):
    """The head's output when its attention puts all weight on one token, for every token.

    SigLIP has no linear projection into the joint space: this per-token value path is its
    analogue of CLIP's `ln_post(token) @ proj`, used for dense (patch) features.
    """
    u = self.attn(x, kind="value")
    return u + self.mlp(self.ln(u))


def check_image_size(cfg: ViTConfig, height: int, width: int) -> tuple[int, int]:
  """Patch grid of an input; sizes must be multiples of the patch.

  The one exception is the checkpoint's own resolution (so400m/14 at 384 px): the original model's
  VALID patch conv silently drops the remainder there, and we do the same to stay equal to it.
  """
  native = (height, width) == (cfg.image_size, cfg.image_size)
  if not native and (height % cfg.patch or width % cfg.patch):
    raise InputError(f"image size {height}x{width} is not divisible by the patch size {cfg.patch}; "
                     f"use a multiple of {cfg.patch} (e.g. {height // cfg.patch * cfg.patch})")
  return height // cfg.patch, width // cfg.patch


def resize_positions(table, old_grid: int, new_grid: tuple[int, int], prefix: int, mode: str):
  """Resize a [prefix + old_grid**2, D] position table to a new grid; class-token rows stay as they are."""
  if (old_grid, old_grid) == tuple(new_grid):
    return table
  head, grid = table[:prefix], table[prefix:]
  grid = grid.reshape(1, old_grid, old_grid, -1)
  grid = resize_2d(grid.astype(jnp.float32), tuple(new_grid), mode).astype(table.dtype)
  return jnp.concatenate([head, grid.reshape(new_grid[0] * new_grid[1], -1)], axis=0)


class VisionTransformer(nn.Module):
  cfg: ViTConfig

  def setup(self):
    c, dtype = self.cfg, jnp.dtype(self.cfg.dtype)
    self.embedding = nn.Conv(c.width, (c.patch, c.patch), strides=(c.patch, c.patch), padding="VALID",
                             use_bias=c.patch_bias, dtype=dtype)
    n_pos = c.grid ** 2 + c.num_prefix_tokens
    self.pos_embedding = self.param("pos_embedding", nn.initializers.normal(c.width ** -0.5), (n_pos, c.width))
    if c.class_token:
      self.cls_token = self.param("cls_token", nn.initializers.normal(c.width ** -0.5), (c.width,))
    if c.pre_norm:
      self.ln_pre = layer_norm(c.ln_eps, dtype)
    self.layers = make_blocks(c.depth, c.heads, c.mlp_dim, c.act, c.ln_eps, dtype, c.remat, c.remat_policy)
    self.ln_post = layer_norm(c.ln_eps, dtype)
    if c.pool == "map":
      self.head = MAPHead(c.width, c.heads, c.mlp_dim, c.ln_eps, dtype)
    if c.proj_dim:
      self.proj = nn.Dense(c.proj_dim, use_bias=False, dtype=dtype)

  # -- pieces ---------------------------------------------------------------------------------
  def embed(self, images):
    """NHWC images -> [B, prefix + gh*gw, D] tokens entering the first block."""
    c = self.cfg
    gh, gw = check_image_size(c, images.shape[1], images.shape[2])
    x = self.embedding(images.astype(jnp.dtype(c.dtype)))[:, :gh, :gw]
    x = x.reshape(x.shape[0], gh * gw, c.width)
    if c.class_token:
      cls = jnp.broadcast_to(self.cls_token.astype(x.dtype), (x.shape[0], 1, c.width))
      x = jnp.concatenate([cls, x], axis=1)
    pos = resize_positions(self.pos_embedding, c.grid, (gh, gw), c.num_prefix_tokens, c.posemb_resize)
    x = x + pos.astype(x.dtype)[None]
    return self.ln_pre(x) if c.pre_norm else x

  def block(self, i: int, x, kind: str = "qk"):
    """Run block i (0-based) with the given attention kind."""
    return self.layers[i](x, None, kind)

  def final_norm(self, x):
    return self.ln_post(x)

  def patch_tokens(self, x):
    """Drop the class token, keeping the square grid of patch tokens."""
    return x[:, self.cfg.num_prefix_tokens:]

  def pool(self, x):
    """Final residual stream -> image embedding in the joint space (or the normed CLS / mean)."""
    c = self.cfg
    if c.pool == "map":
      return self.head(self.ln_post(x))
    y = self.ln_post(x[:, 0]) if c.pool == "cls" else self.ln_post(x).mean(axis=1)
    return self.proj(y) if c.proj_dim else y

  # -- whole tower ----------------------------------------------------------------------------
  def __call__(self, images, taps: Sequence[int] = (), attn_kinds: Mapping[int, str] | None = None):
    """images NHWC -> {"pooled", "tokens", "hidden": {layer: [B, N, D]}, "grid"}.

    taps: 1-based block indices whose outputs are returned (0 = the input of block 1).
    attn_kinds: {1-based block index: attention kind} to swap attention in chosen blocks (DPAM).
    """
    attn_kinds = attn_kinds or {}
    bad = [t for t in taps if not 0 <= t <= self.cfg.depth]
    if bad:
      raise InputError(f"taps {bad} out of range: the tower has blocks 1..{self.cfg.depth}")
    gh, gw = check_image_size(self.cfg, images.shape[1], images.shape[2])
    x = self.embed(images)
    hidden = {0: x} if 0 in taps else {}
    for i in range(self.cfg.depth):
      x = self.block(i, x, attn_kinds.get(i + 1, "qk"))
      if i + 1 in taps:
        hidden[i + 1] = x
    out = {"hidden": hidden, "grid": (gh, gw), "tokens": self.ln_post(x)}
    out["pooled"] = self.pool(x) if self.cfg.pool != "none" else out["tokens"]
    return out
