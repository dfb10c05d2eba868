"""Moondream's region module: Fourier features, coordinate and size encoders and decoders.

Coordinates and sizes enter the decoder as embeddings (`encode_coordinate`, `encode_size`: Fourier
features of the value, then a Linear), and are read back from a raw decoder hidden state as bin
logits (`decode_coordinate` -> [..., bins], `decode_size` -> [..., 2, bins] for width and height).
Moondream 2/0.5B decoders are 2-layer MLPs; Moondream 3 (`inner_dim=None`) applies its own LayerNorm
`ln` and a single Linear.

Numerics: the reference computes everything in bf16, including the Fourier angles, which reach the
hundreds (bf16 rounds them by up to ~1 radian). Here the features are always float32: the accurate
choice; the difference to a bf16 run is of the order of that rounding.
"""
import math

import flax.linen as nn
import jax.numpy as jnp

from aajax.nn.layers import Mlp, layer_norm
from aajax.vlm.config import RegionConfig


def fourier_features(x, freqs):
  """x [..., k], freqs [k, F] -> [..., 2F] = concat(cos(2 pi x freqs), sin(2 pi x freqs))."""
  f = 2 * math.pi * (x.astype(jnp.float32) @ freqs.astype(jnp.float32))
  return jnp.concatenate([jnp.cos(f), jnp.sin(f)], axis=-1)


def coordinate_from_logits(logits):
  """Bin logits [..., n] -> coordinate argmax / n in [0, (n-1)/n] (the reference's decode rule)."""
  n = logits.shape[-1]
  return jnp.argmax(logits, axis=-1).astype(jnp.float32) / n


def size_from_logits(logits, scale: str):
  """[..., 2, n] -> (w, h) [..., 2]. "log": 2**(10 b/(n-1) - 10) in [2**-10, 1]; "linear": b / n."""
  n = logits.shape[-1]
  b = jnp.argmax(logits, axis=-1).astype(jnp.float32)
  if scale == "log":
    return jnp.exp2(10.0 * b / (n - 1) - 10.0)
  return b / n


class RegionModel(nn.Module):
  cfg: RegionConfig

  def setup(self):
    c, dtype = self.cfg, jnp.dtype(self.cfg.dtype)
    self.coord_features = self.param("coord_features", nn.initializers.normal(1.0), (1, c.coord_feat_dim // 2))
    self.size_features = self.param("size_features", nn.initializers.normal(1.0), (2, c.size_feat_dim // 2))
    self.coord_encoder = nn.Dense(c.dim, dtype=dtype)
    self.size_encoder = nn.Dense(c.dim, dtype=dtype)
    if c.inner_dim is None:
      self.ln = layer_norm(c.ln_eps, dtype)
      self.coord_decoder = nn.Dense(c.coord_out_dim, dtype=dtype)
      self.size_decoder = nn.Dense(c.size_out_dim, dtype=dtype)
    else:
      self.coord_decoder = Mlp(c.inner_dim, "gelu_tanh", dtype, out_dim=c.coord_out_dim)
      self.size_decoder = Mlp(c.inner_dim, "gelu_tanh", dtype, out_dim=c.size_out_dim)

  def _head_input(self, hidden):
    hidden = hidden.astype(jnp.dtype(self.cfg.dtype))
    return self.ln(hidden) if self.cfg.inner_dim is None else hidden

  def encode_coordinate(self, coord):
    """coord [..., 1] in [0, 1] -> [..., dim]."""
    return self.coord_encoder(fourier_features(coord, self.coord_features).astype(jnp.dtype(self.cfg.dtype)))

  def encode_size(self, size):
    """size [..., 2] = (w, h) -> [..., dim]."""
    return self.size_encoder(fourier_features(size, self.size_features).astype(jnp.dtype(self.cfg.dtype)))

  def decode_coordinate(self, hidden):
    """raw decoder hidden [..., dim] -> float32 bin logits [..., coord_out_dim]."""
    return self.coord_decoder(self._head_input(hidden)).astype(jnp.float32)

  def decode_size(self, hidden):
    """raw decoder hidden [..., dim] -> float32 bin logits [..., 2, size_out_dim // 2] (w row, h row)."""
    logits = self.size_decoder(self._head_input(hidden)).astype(jnp.float32)
    return logits.reshape(*logits.shape[:-1], 2, -1)

  def __call__(self, hidden):
    """Touches every parameter (for init)."""
    c = self.decode_coordinate(hidden)
    s = self.decode_size(hidden)
    coord = jnp.zeros(hidden.shape[:-1] + (1,), jnp.float32)
    size = jnp.zeros(hidden.shape[:-1] + (2,), jnp.float32)
    return c, s, self.encode_coordinate(coord), self.encode_size(size)
