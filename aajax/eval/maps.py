"""Anomaly-map post-processing of the AA-CLIP evaluation, and the image score built from it.

Per level, the patch-grid map is blurred on the grid (kornia's gaussian_blur2d, reflect border;
Industrial: kernel 7, sigma 1; Medical: kernel 9, sigma 1.5), upsampled bilinearly with
align_corners=True to the image size, and the levels are summed. Blur and upsampling are linear
maps along each axis, so each is a small matrix (built on the host in float64, applied with two
matmuls); the functions work on numpy arrays and on jax arrays (under jit too).

Per class, maps and detection scores are min-max normalised with the class's own test-set
statistics (as the reference does; pass stored statistics for single images). The image score is
0.5 * max(normalised map) + 0.5 * normalised detection score for Industrial classes, and
max(normalised map) for Medical ones.

Other codebases (AnomalyCLIP) instead blur the full-resolution map with sigma 4: `smooth_full`.
"""
import functools

import numpy as np

from aajax.errors import InputError
from aajax.nn.resize import interpolation_matrix

GRID_BLUR = {"Industrial": (7, 1.0), "Medical": (9, 1.5)}
DOMAINS = tuple(GRID_BLUR)


def _xp(x):
  if isinstance(x, np.ndarray) or np.isscalar(x):
    return np
  import jax.numpy as jnp
  return jnp


def _blur_spec(domain_or_kernel):
  if isinstance(domain_or_kernel, str):
    if domain_or_kernel not in GRID_BLUR:
      raise InputError(f"unknown domain {domain_or_kernel!r}; expected one of {DOMAINS}")
    return GRID_BLUR[domain_or_kernel]
  ksize, sigma = domain_or_kernel
  return int(ksize), float(sigma)


def gaussian_kernel1d(ksize: int, sigma: float) -> np.ndarray:
  """kornia's get_gaussian_kernel1d: taps at offsets -k//2.. (+0.5 for even k), normalised."""
  x = np.arange(ksize, dtype=np.float64) - ksize // 2
  if ksize % 2 == 0:
    x = x + 0.5
  g = np.exp(-(x ** 2) / (2.0 * sigma ** 2))
  return g / g.sum()


@functools.lru_cache(maxsize=64)
def blur_matrix(n: int, ksize: int, sigma: float) -> np.ndarray:
  """[n, n] matrix of a 1-D gaussian blur with reflect padding (torch/numpy 'reflect':
  the edge sample is not repeated), as kornia's filter2d pads."""
  g = gaussian_kernel1d(ksize, sigma)
  half = ksize // 2
  m = np.zeros((n, n), np.float64)
  for o in range(n):
    for t, w in enumerate(g):
      i = o + t - half
      while i < 0 or i >= n:  # reflect (repeatedly, for kernels wider than the signal)
        i = -i if i < 0 else 2 * (n - 1) - i
      m[o, i] += w
  return m


def _apply_separable(x, mh, mw):
  xp = _xp(x)
  dtype = x.dtype if xp.issubdtype(x.dtype, xp.floating) else np.float32
  # Contiguous transposed matrix: numpy's batched matmul is ~10x slower on a strided operand.
  mh, mwt = xp.asarray(mh, dtype), xp.asarray(np.ascontiguousarray(mw.T), dtype)
  # [..., H, W] -> [..., H', W']: two batched matmuls (a three-operand einsum is slow in numpy)
  return xp.matmul(mh, xp.matmul(x, mwt))


def blur_grid(maps, domain="Industrial"):
  """Gaussian blur of patch-grid maps [..., h, w]; `domain` or (kernel size, sigma)."""
  ksize, sigma = _blur_spec(domain)
  h, w = maps.shape[-2:]
  return _apply_separable(maps, blur_matrix(h, ksize, sigma), blur_matrix(w, ksize, sigma))


def upsample(maps, size):
  """Bilinear, align_corners=True (torch-exact) upsampling of [..., h, w] to `size` (int or (H, W))."""
  size = (size, size) if isinstance(size, int) else tuple(size)
  h, w = maps.shape[-2:]
  return _apply_separable(maps, interpolation_matrix(h, size[0], "bilinear_corners"),
                          interpolation_matrix(w, size[1], "bilinear_corners"))


def combine_levels(level_maps, size, domain="Industrial", blur=True):
  """Sum over levels of upsample(blur(level)): level_maps [L, ..., h, w] (or a list) -> [..., H, W].

  Blur and upsampling are linear, so the levels are summed on the grid and upsampled once; this
  equals the per-level order of the reference up to float32 rounding."""
  xp = _xp(level_maps[0])
  grid = xp.sum(xp.stack(list(level_maps)), axis=0)
  if blur:
    grid = blur_grid(grid, domain)
  return upsample(grid, size)


def score_map(logits):
  """AA-CLIP's map from [..., 2] (normal, abnormal) similarity logits: (s_abn + 1 - s_norm) / 2."""
  return (logits[..., 1] + 1.0 - logits[..., 0]) / 2.0


def smooth_full(maps: np.ndarray, sigma: float = 4.0) -> np.ndarray:
  """AnomalyCLIP-style gaussian_filter(sigma) on full-resolution maps [..., H, W] (scipy)."""
  import scipy.ndimage
  maps = np.asarray(maps, np.float32)
  sig = (0,) * (maps.ndim - 2) + (sigma, sigma)
  return scipy.ndimage.gaussian_filter(maps, sigma=sig)


# ------------------------------------------------------------------------- per-class normalisation

def minmax_by_class(values, class_ids, n_classes=None) -> np.ndarray:
  """[n_classes, 2] (min, max) of `values` [N, ...] per class id [N] (NaN for absent classes)."""
  values = np.asarray(values, np.float64)
  class_ids = np.asarray(class_ids)
  n_classes = int(class_ids.max()) + 1 if n_classes is None else n_classes
  flat = values.reshape(len(values), -1)
  lo, hi = flat.min(axis=1), flat.max(axis=1)
  out = np.full((n_classes, 2), np.nan)
  for c in np.unique(class_ids):
    out[c] = lo[class_ids == c].min(), hi[class_ids == c].max()
  return out


def normalize(values, class_ids, stats):
  """(values - min) / (max - min) with each row's class statistics; a constant class maps to 0."""
  values = np.asarray(values, np.float32)
  lo = stats[np.asarray(class_ids), 0].astype(np.float32)
  span = (stats[np.asarray(class_ids), 1] - stats[np.asarray(class_ids), 0]).astype(np.float32)
  shape = (-1,) + (1,) * (values.ndim - 1)
  span = np.where(span > 0, span, np.float32(1.0))
  return (values - lo.reshape(shape)) / span.reshape(shape)


def image_scores(map_max, det_scores, class_ids, domains, map_stats=None, det_stats=None):
  """The reference's image score from per-image map maxima [N] and detection scores [N] (or None).

  domains: per class id, "Industrial" or "Medical". Stats default to the set's own per-class
  min/max (map_stats must then describe the full maps: pass `minmax_by_class(maps, ...)`)."""
  class_ids = np.asarray(class_ids)
  map_max = np.asarray(map_max, np.float32)
  if map_stats is None:
    map_stats = minmax_by_class(map_max, class_ids, len(domains))
  pix = normalize(map_max, class_ids, map_stats)
  medical = np.asarray([domains[c] == "Medical" for c in class_ids])
  if det_scores is None:
    return pix
  if det_stats is None:
    det_stats = minmax_by_class(det_scores, class_ids, len(domains))
  det = normalize(det_scores, class_ids, det_stats)
  return np.where(medical, pix, np.float32(0.5) * pix + np.float32(0.5) * det)
