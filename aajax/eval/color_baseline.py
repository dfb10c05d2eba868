"""A training-free reference scorer: per class, a Gaussian over local colour and edge features of
normal pixels; a pixel's anomaly score is its Mahalanobis distance, averaged over patches.

It is not a model of the field -- it exists so the evaluation, reports and heatmaps can be run
end to end on any data set without weights (colour stains, spots and holes show up; scratches
faintly; deformations hardly). Output is a patch-grid map, like the AA model's.
"""
import numpy as np
import scipy.ndimage

from aajax.data import transforms


def _features(image_uint8, size):
  x = transforms.resize_image(image_uint8, size).astype(np.float32) / 255.0
  smooth = scipy.ndimage.gaussian_filter(x, sigma=(1, 1, 0))
  grey = smooth.mean(-1)
  edges = np.hypot(scipy.ndimage.sobel(grey, 0), scipy.ndimage.sobel(grey, 1))
  return np.concatenate([smooth, edges[..., None]], axis=-1).reshape(-1, 4)


class ColorBaseline:
  def __init__(self, image_size: int, patch: int = 16, max_pixels: int = 200_000, seed: int = 0):
    self.size, self.patch, self.max_pixels, self.seed = image_size, patch, max_pixels, seed
    self.stats = {}

  def fit(self, samples):
    """Fit one Gaussian per class on its normal samples (label 0)."""
    rng = np.random.default_rng(self.seed)
    by_class = {}
    for s in samples:
      if not s.label:
        by_class.setdefault(s.class_name, []).append(_features(s.load_image(), self.size))
    for cls, feats in by_class.items():
      f = np.concatenate(feats)
      if len(f) > self.max_pixels:
        f = f[rng.choice(len(f), self.max_pixels, replace=False)]
      cov = np.cov(f, rowvar=False) + 1e-4 * np.eye(f.shape[1])
      self.stats[cls] = (f.mean(0), np.linalg.inv(cov))
    return self

  def grid_map(self, sample) -> np.ndarray:
    """[size // patch, size // patch] float32 anomaly map of one sample."""
    mean, prec = self.stats[sample.class_name]
    d = _features(sample.load_image(), self.size) - mean
    # log: a few extreme pixels (a saturated spot) would otherwise flatten the class's heatmaps
    dist = np.log1p(np.sqrt(np.einsum("ni,ij,nj->n", d, prec, d))).reshape(self.size, self.size)
    g = self.size // self.patch
    dist = dist[:g * self.patch, :g * self.patch]
    return dist.reshape(g, self.patch, g, self.patch).mean(axis=(1, 3)).astype(np.float32)
