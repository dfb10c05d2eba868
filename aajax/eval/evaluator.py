"""Per-class evaluation of a whole test set in bounded memory.

Feed it batches as they come off the model: class ids, labels, anomaly maps, ground-truth masks,
detection scores. Maps may be full resolution or, far cheaper, the patch-grid map (already blurred
and summed over levels, see aajax.eval.maps): because upsampling is linear, the evaluator keeps only
the grid (37 x 37 floats an image at 518 px) and re-creates full-resolution pixels chunk by chunk
when a metric sweeps over them. Masks are kept bit-packed (1 bit a pixel). A MVTec-size test set
(1,725 images at 518 px, ~460 M pixels) then holds ~70 MB, and the metric sweep adds a bounded
working set (see aajax.eval.metrics; benchmarks/eval_memory.py measures it).

Results follow the reference: per class, image score from the class-normalised map maximum and
detection score by domain rule (aajax.eval.maps.image_scores); pixel metrics over all pixels of
the class. Pixel AUROC/AP/F1/AUPRO are computed on the raw maps: the per-class min-max
normalisation is monotone and does not change them.
"""
import math

import numpy as np

from aajax.errors import InputError
from aajax.eval import maps as maps_lib
from aajax.eval import metrics


class Evaluator:
  def __init__(self, class_names, domains, image_size: int, pro: bool = True,
               budget: int = metrics.DEFAULT_BUDGET):
    """domains: one of "Industrial"/"Medical" per class (list in class order, or dict)."""
    self.class_names = list(class_names)
    if isinstance(domains, dict):
      domains = [domains[c] for c in self.class_names]
    self.domains = list(domains)
    self.size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    self.pro, self.budget = pro, budget
    self._maps, self._masks, self._labels, self._class, self._det, self._ids = [], [], [], [], [], []

  def add(self, class_ids, labels, maps, masks, det_scores=None, valid=None, ids=None):
    """One batch: class_ids [B], labels [B], maps [B, h, w] (grid or full size), masks [B, H, W]
    at the evaluation size, det_scores [B] or None, valid [B] bool (padding rows are skipped)."""
    maps, masks = np.asarray(maps, np.float32), np.asarray(masks)
    b = len(maps)
    if masks.shape != (b,) + self.size:
      raise InputError(f"masks {masks.shape} do not match {b} maps at evaluation size {self.size}")
    if not np.isfinite(maps).all():
      raise InputError("anomaly maps contain NaN or inf")
    keep = np.ones(b, bool) if valid is None else np.asarray(valid, bool)
    for i in np.flatnonzero(keep):
      self._maps.append(maps[i].copy())
      self._masks.append(np.packbits(masks[i].ravel() != 0))
      self._labels.append(int(labels[i]))
      self._class.append(int(class_ids[i]))
      self._det.append(math.nan if det_scores is None else float(det_scores[i]))
      self._ids.append(None if ids is None else ids[i])

  def __len__(self):
    return len(self._maps)

  def _full(self, idx):
    """Full-resolution float32 maps [n, H, W] of images idx."""
    grid = np.stack([self._maps[i] for i in idx])
    if grid.shape[1:] == self.size:
      return grid
    return maps_lib.upsample(grid, self.size).astype(np.float32)

  def _mask(self, idx):
    n = self.size[0] * self.size[1]
    return np.stack([np.unpackbits(self._masks[i], count=n).reshape(self.size) for i in idx])

  def _chunks(self, idx):
    per = max(1, self.budget // (8 * self.size[0] * self.size[1]))   # chunk temporaries ~ budget
    parts = [idx[i:i + per] for i in range(0, len(idx), per)]
    return (lambda j: (self._full(parts[j]), self._mask(parts[j]))), len(parts)

  def class_indices(self, c: int) -> np.ndarray:
    return np.flatnonzero(np.asarray(self._class) == c)

  def map_extremes(self, idx):
    """(min, max) of each image's full-resolution map."""
    lo, hi = [], []
    for j in range(0, len(idx), 64):
      full = self._full(idx[j:j + 64])
      lo.append(full.min(axis=(1, 2)))
      hi.append(full.max(axis=(1, 2)))
    return np.concatenate(lo), np.concatenate(hi)

  def results(self, curves: bool = False) -> dict:
    """{class: {image_auroc, image_ap, image_f1_max, pixel_auroc, pixel_ap, pixel_f1_max,
    pixel_aupro, n_images, n_anomalous}} (+ "curves" per class when asked)."""
    if not self._maps:
      raise InputError("nothing to evaluate: no images were added")
    out = {}
    class_arr = np.asarray(self._class)
    det_all = np.asarray(self._det)
    for c, name in enumerate(self.class_names):
      idx = np.flatnonzero(class_arr == c)
      if not len(idx):
        continue
      labels = np.asarray([self._labels[i] for i in idx])
      lo, hi = self.map_extremes(idx)
      stats = np.asarray([[lo.min(), hi.max()]])
      det = det_all[idx]
      det = None if np.isnan(det).any() else det
      scores = maps_lib.image_scores(hi, det, np.zeros(len(idx), int), [self.domains[c]],
                                     map_stats=stats)
      image = metrics.image_metrics(labels, scores)
      chunks, n = self._chunks(idx)
      sweep = metrics.sweep_chunks(chunks, n, pro=self.pro, budget=self.budget,
                                   curve_points=300 if curves else 0)
      pixel = sweep.result()
      row = {"image_auroc": image["auroc"], "image_ap": image["ap"],
             "image_f1_max": image["f1_max"], "pixel_auroc": pixel["auroc"],
             "pixel_ap": pixel["ap"], "pixel_f1_max": pixel["f1_max"]}
      if self.pro:
        row["pixel_aupro"] = pixel["aupro"]
      row.update(n_images=len(idx), n_anomalous=int(labels.sum()))
      if curves:
        row["curves"] = {"image": metrics.curves(labels, scores), "pixel": sweep.curves()}
      out[name] = row
    return out

  def normalized_maps(self, idx) -> np.ndarray:
    """Full-resolution maps of images idx, min-max normalised with their class's statistics
    (for heatmaps)."""
    idx = np.asarray(idx)
    out = self._full(idx)
    for c in np.unique(np.asarray(self._class)[idx]):
      lo, hi = self.map_extremes(self.class_indices(c))
      sel = np.asarray(self._class)[idx] == c
      span = hi.max() - lo.min()
      out[sel] = (out[sel] - lo.min()) / (span if span > 0 else 1.0)
    return out
