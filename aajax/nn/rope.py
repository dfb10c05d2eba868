"""Rotary position embedding with partial rotation (NeoX "half" layout).

Only the first `rotary_dim` dims of each head are rotated; the rest pass through. Pair j is
(x[j], x[j + rotary_dim/2]) rotated by pos * theta^(-2j/rotary_dim). Moondream's reference writes the
rotated pairs interleaved instead of in halves; Q and K get the same permutation and V none, so
attention outputs are identical and only the raw K cache layout differs from the reference.
The angles and the rotation are computed in float32 whatever the activation dtype.
"""
import jax.numpy as jnp


def rope_frequencies(rotary_dim: int, theta: float):
  return 1.0 / (theta ** (jnp.arange(0, rotary_dim, 2, dtype=jnp.float32) / rotary_dim))


def apply_rope(x, positions, rotary_dim: int, theta: float):
  """x [B, T, H, hd], positions [B, T] (int) -> x with its first rotary_dim dims rotated."""
  angles = positions.astype(jnp.float32)[..., None] * rope_frequencies(rotary_dim, theta)  # [B, T, r/2]
  cos, sin = jnp.cos(angles)[:, :, None], jnp.sin(angles)[:, :, None]
  half = rotary_dim // 2
  x_rot = x[..., :rotary_dim].astype(jnp.float32)
  x1, x2 = x_rot[..., :half], x_rot[..., half:]
  rotated = jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1).astype(x.dtype)
  return jnp.concatenate([rotated, x[..., rotary_dim:]], axis=-1)
