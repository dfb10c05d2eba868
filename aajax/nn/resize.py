"""Resizing that reproduces `torch.nn.functional.interpolate` exactly.

`jax.image.resize` covers some torch modes but not all: its cubic kernel uses a = -0.5 with edge
renormalisation, while torch's non-antialiased bicubic uses a = -0.75 with clamped indices, and it
has no align_corners=True. Every mode here is a separable linear map, so we build the two 1-D
interpolation matrices on the host in float64 (they are constants under jit) and apply them with
two matmuls. Modes:

  "bilinear"          F.interpolate(mode="bilinear", align_corners=False)
  "bilinear_corners"  F.interpolate(mode="bilinear", align_corners=True)   (AA-CLIP score maps)
  "bicubic"           F.interpolate(mode="bicubic", align_corners=False)   (HF interpolate_pos_encoding)
  "bicubic_aa"        F.interpolate(mode="bicubic", antialias=True)        (open_clip resize_pos_embed)
  "bilinear_aa"       F.interpolate(mode="bilinear", antialias=True)       (SigLIP2 NaFlex)
"""
import functools
import math

import jax.numpy as jnp
import numpy as np

RESIZE_MODES = ("bilinear", "bilinear_corners", "bicubic", "bicubic_aa", "bilinear_aa")


def _cubic(x, a):
  x = abs(x)
  if x <= 1:
    return ((a + 2) * x - (a + 3)) * x * x + 1
  if x < 2:
    return (((x - 5) * x + 8) * x - 4) * a
  return 0.0


def _linear(x):
  return max(0.0, 1.0 - abs(x))


def _plain_matrix(n_in, n_out, mode):
  w = np.zeros((n_out, n_in), np.float64)
  if mode == "bilinear_corners":
    step = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
    for o in range(n_out):
      src = o * step
      i0 = min(int(math.floor(src)), n_in - 1)
      i1 = min(i0 + 1, n_in - 1)
      t = src - i0
      w[o, i0] += 1 - t
      w[o, i1] += t
    return w
  scale = n_in / n_out
  for o in range(n_out):
    src = (o + 0.5) * scale - 0.5
    if mode == "bilinear":
      src = max(src, 0.0)
      i0 = min(int(math.floor(src)), n_in - 1)
      i1 = min(i0 + 1, n_in - 1)
      t = src - i0
      w[o, i0] += 1 - t
      w[o, i1] += t
    else:  # bicubic, a = -0.75, indices clamped at the borders
      i = int(math.floor(src))
      t = src - i
      for k in range(-1, 3):
        w[o, min(max(i + k, 0), n_in - 1)] += _cubic(k - t, -0.75)
  return w


def _antialias_matrix(n_in, n_out, mode):
  # PIL-style separable filter, as torch's _upsample_{bilinear,bicubic}2d_aa computes it.
  scale = n_in / n_out
  interp_size, kernel = (4, lambda x: _cubic(x, -0.5)) if mode == "bicubic_aa" else (2, _linear)
  support = interp_size / 2 * scale if scale >= 1.0 else interp_size / 2
  invscale = 1.0 / scale if scale >= 1.0 else 1.0
  w = np.zeros((n_out, n_in), np.float64)
  for o in range(n_out):
    center = scale * (o + 0.5)
    xmin = max(int(center - support + 0.5), 0)
    xmax = min(int(center + support + 0.5), n_in)
    ws = np.array([kernel((j + xmin - center + 0.5) * invscale) for j in range(xmax - xmin)])
    total = ws.sum()
    w[o, xmin:xmax] = ws / total if total != 0 else ws
  return w


@functools.lru_cache(maxsize=256)
def interpolation_matrix(n_in: int, n_out: int, mode: str) -> np.ndarray:
  """[n_out, n_in] float64 matrix M such that resized = M @ signal along one axis."""
  if mode not in RESIZE_MODES:
    raise ValueError(f"unknown resize mode {mode!r}; expected one of {RESIZE_MODES}")
  if n_in == n_out and mode != "bilinear_corners":
    return np.eye(n_in)
  if mode.endswith("_aa"):
    return _antialias_matrix(n_in, n_out, mode)
  return _plain_matrix(n_in, n_out, mode)


def resize_2d(x, size: tuple[int, int], mode: str, axes: tuple[int, int] = (-3, -2)):
  """Resize the two spatial axes of `x` (default NHWC layout) to `size` with torch semantics."""
  ha, wa = (a % x.ndim for a in axes)
  mh = interpolation_matrix(x.shape[ha], size[0], mode)
  mw = interpolation_matrix(x.shape[wa], size[1], mode)
  xp = np if isinstance(x, np.ndarray) else jnp
  dtype = x.dtype if xp.issubdtype(x.dtype, xp.floating) else np.float32
  mh, mw = xp.asarray(mh, dtype), xp.asarray(mw, dtype)
  x = xp.moveaxis(xp.tensordot(mh, x, axes=([1], [ha])), 0, ha)
  return xp.moveaxis(xp.tensordot(mw, x, axes=([1], [wa])), 0, wa)
