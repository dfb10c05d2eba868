"""Exact threshold metrics (AUROC, AP, F1-max, AUPRO) in bounded memory.

Definitions (those of scikit-learn where it has the metric; see the tests):
  AUROC   trapezoidal area under (FPR, TPR) over every distinct score = sklearn roc_auc_score.
  AP      sum_n (R_n - R_{n-1}) P_n over distinct scores, no interpolation = average_precision_score.
  F1-max  max over distinct scores of 2PR / (P + R) = 2 TP / (n_pos + TP + FP).
  AUPRO   regions = 8-connected components of each image's ground truth; at threshold t,
          PRO(t) = mean over regions of the fraction of the region scored >= t, and FPR(t) over all
          non-defect pixels of the set (normal images included). The curve (FPR, PRO) through
          every distinct score, linearly interpolated, is integrated from FPR 0 to `fpr_limit` and
          divided by `fpr_limit` (so a perfect map scores 1).

How. Every metric is a function of the counts (negatives, positives, region weight) at each
distinct score, swept from high to low. PRO needs no per-region curves: give every defect pixel
the weight 1 / (n_regions * |its region|); PRO(t) is then the cumulative weight above t.

Memory. Pixel sets can be huge (a MVTec-size test set at 518 px is ~460 M pixels). Scores are
float32 (as the reference's maps are), mapped to order-preserving uint32 keys; a pixel's key and its
region id pack into one uint64 that sorts in place (8 bytes per pixel, no argsort). Sets larger than
`budget` pixels are swept in key ranges: one pass histograms the top 16 key bits, then each range
of at most ~`budget` pixels is gathered from the chunks, sorted and reduced in turn. Peak extra
memory is about 24 bytes x budget (default 2^24 pixels: ~400 MB) whatever the set size, at the
price of one pass over the data per range. The result is exact, not binned.

One-label sets (only normal or only anomalous samples) have no AUROC: the metric is NaN and
`n_pos` / `n_neg` in the result say why; reports print "n/a".
"""
import math

import numpy as np
import scipy.ndimage

from aajax.errors import InputError

DEFAULT_BUDGET = 1 << 24
_EIGHT_CONNECTED = np.ones((3, 3), bool)


# ------------------------------------------------------------------------------------- float keys

def float_keys(scores: np.ndarray) -> np.ndarray:
  """float32 -> uint32 with the same order (and -0.0 == 0.0). NaN is an error."""
  x = np.asarray(scores, np.float32).ravel() + np.float32(0.0)   # -0.0 + 0.0 == +0.0
  if np.isnan(x).any():
    raise InputError("scores contain NaN; metrics need finite anomaly maps and scores")
  bits = x.view(np.uint32)
  return np.where(bits >> 31, ~bits, bits | np.uint32(1 << 31))


def keys_to_float(keys: np.ndarray) -> np.ndarray:
  keys = np.asarray(keys, np.uint32)
  bits = np.where(keys >> 31, keys & np.uint32(0x7FFFFFFF), ~keys)
  return bits.astype(np.uint32).view(np.float32)


# ------------------------------------------------------------------------------- curve reduction

class _Sweep:
  """Accumulates the metrics over groups of distinct thresholds, highest first."""

  def __init__(self, n_pos, n_neg, n_regions, fpr_limit, curve_points=0, pro=False):
    self.n_pos, self.n_neg, self.n_regions = int(n_pos), int(n_neg), int(n_regions)
    self.with_pro = pro
    self.fpr_limit = fpr_limit
    self.tp = self.fp = 0
    self.pro = 0.0
    self.roc_area2 = 0          # 2 * P * N * AUROC, in exact integers
    self.ap_sum = 0.0
    self.f1 = (-1.0, math.nan)  # (value, threshold)
    self.pro_area = 0.0
    self.pro_done = False
    self.curve_step = 1.0 / curve_points if curve_points else 0.0
    self.curve = [(math.inf, 0, 0)]  # thinned (threshold, tp, fp), for plots
    self._last_kept = 0.0

  def update(self, thresholds, dn, dp, dw=None):
    if len(dn) == 0:
      return
    dn, dp = dn.astype(np.int64), dp.astype(np.int64)
    tp = self.tp + np.cumsum(dp)
    fp = self.fp + np.cumsum(dn)
    tp_prev = np.concatenate([[self.tp], tp[:-1]])
    self.roc_area2 += int(np.sum(dn * (2 * tp_prev + dp)))
    if self.n_pos:
      hit = dp > 0
      self.ap_sum += float(np.sum(dp[hit] * (tp[hit] / (tp[hit] + fp[hit]))))
      f1 = 2.0 * tp / (self.n_pos + tp + fp)
      i = int(np.argmax(f1))
      if f1[i] > self.f1[0]:
        self.f1 = (float(f1[i]), float(thresholds[i]))
    if dw is not None and self.n_regions and self.n_neg and not self.pro_done:
      self._pro_update(fp, np.cumsum(dw) + self.pro)
    if self.curve_step:
      self._keep_curve(thresholds, tp, fp)
    self.tp, self.fp = int(tp[-1]), int(fp[-1])
    if dw is not None:
      self.pro += float(np.sum(dw))

  def _pro_update(self, fp, pro_cum):
    x = np.concatenate([[self.fp], fp]) / self.n_neg
    y = np.concatenate([[self.pro], pro_cum])   # weights already carry 1 / n_regions
    lim = self.fpr_limit
    inside = x[1:] <= lim
    k = int(np.argmin(inside)) if not inside.all() else len(inside)   # first segment crossing lim
    self.pro_area += float(np.sum((x[1:k + 1] - x[:k]) * (y[1:k + 1] + y[:k]) / 2))
    if k < len(inside):
      x0, x1, y0, y1 = x[k], x[k + 1], y[k], y[k + 1]
      y_lim = y0 + (y1 - y0) * (lim - x0) / (x1 - x0)
      self.pro_area += (lim - x0) * (y_lim + y0) / 2
      self.pro_done = True

  def _keep_curve(self, thresholds, tp, fp):
    # Keep a point whenever TPR + FPR has moved by curve_step: enough for a readable plot.
    progress = tp / max(self.n_pos, 1) + fp / max(self.n_neg, 1)
    bucket = np.floor(progress / self.curve_step)
    keep = np.flatnonzero(np.diff(np.concatenate([[np.floor(self._last_kept / self.curve_step)],
                                                  bucket])) > 0)
    self.curve += [(float(thresholds[i]), int(tp[i]), int(fp[i])) for i in keep]
    if len(keep):
      self._last_kept = float(progress[keep[-1]])

  def result(self) -> dict:
    p, n = self.n_pos, self.n_neg
    out = {
        "auroc": self.roc_area2 / (2.0 * p * n) if p and n else math.nan,
        "ap": self.ap_sum / p if p else math.nan,
        "f1_max": self.f1[0] if p else math.nan,
        "f1_threshold": self.f1[1] if p else math.nan,
        "n_pos": p,
        "n_neg": n,
    }
    if self.with_pro:
      out["aupro"] = self.pro_area / self.fpr_limit if self.n_regions and n else math.nan
      out["n_regions"] = self.n_regions
    return out

  def curves(self) -> dict:
    """Thinned ROC and PR curves (arrays), for plots only."""
    thr, tp, fp = (np.asarray(v, np.float64) for v in zip(*self.curve, (-math.inf, self.tp, self.fp)))
    p, n = max(self.n_pos, 1), max(self.n_neg, 1)
    precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 1.0)
    return {"fpr": fp / n, "tpr": tp / p, "recall": tp / p, "precision": precision,
            "thresholds": thr}


# -------------------------------------------------------------------------------- group reduction

def _reduce_sorted(packed: np.ndarray, weights):
  """Sorted uint64 (key << 32 | region) -> distinct keys descending with (dn, dp, dw)."""
  keys = (packed >> np.uint64(32)).astype(np.uint32)
  region = (packed & np.uint64(0xFFFFFFFF)).astype(np.uint32)
  starts = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]]))
  pos = region > 0
  dp = np.add.reduceat(pos, starts, dtype=np.int64)
  counts = np.diff(np.concatenate([starts, [len(keys)]]))
  dn = counts - dp
  dw = np.add.reduceat(weights[region], starts) if weights is not None else None
  rev = slice(None, None, -1)
  return keys[starts][rev], dn[rev], dp[rev], (dw[rev] if dw is not None else None)


def _merge(parts):
  """Merge per-chunk reductions of one key range (each descending) into one, descending."""
  if len(parts) == 1:
    return parts[0]
  keys = np.concatenate([p[0] for p in parts])
  uniq, inv = np.unique(keys, return_inverse=True)
  def total(i, dtype):
    if parts[0][i] is None:
      return None
    return np.bincount(inv, weights=np.concatenate([p[i] for p in parts]),
                       minlength=len(uniq)).astype(dtype)[::-1]
  return uniq[::-1], total(1, np.int64), total(2, np.int64), total(3, np.float64)


def _label_regions(mask):
  """Region ids of a [n, H, W] mask stack: 8-connected within each image, numbered 1..k through
  the whole stack (0 = background); and k."""
  out = np.zeros(mask.shape, np.uint32)
  k = 0
  for i, m in enumerate(mask):
    if m.any():
      lab, n = scipy.ndimage.label(m, structure=_EIGHT_CONNECTED)
      out[i] = np.where(lab > 0, lab + k, 0)
      k += n
  return out, k


def _chunk_aux(mask, regions, offset):
  """Per-pixel region id in the global numbering (0 = background)."""
  if regions is None:
    return mask.astype(np.uint32).ravel()
  aux = regions.astype(np.uint32)
  aux[aux > 0] += np.uint32(offset)
  return aux.ravel()


def sweep_chunks(chunks, n_chunks: int, *, pro: bool = True, fpr_limit: float = 0.3,
                 budget: int = DEFAULT_BUDGET, curve_points: int = 0):
  """Exact metrics over data given as `chunks(i) -> (scores float [..], labels/masks {0,1} [..])`
  for i < n_chunks (called several times per chunk; must return the same data each time).
  With pro, chunks are image stacks [n, H, W] and AUPRO is computed. Returns the `_Sweep`."""
  if not 0 < fpr_limit <= 1:
    raise InputError(f"fpr_limit must be in (0, 1], got {fpr_limit}")

  def load(i, label_regions):
    scores, target = chunks(i)
    scores = np.asarray(scores)
    target = np.asarray(target)
    if scores.shape != target.shape:
      raise InputError(f"scores {scores.shape} and ground truth {target.shape} differ in shape")
    target = target != 0
    regions = None
    if pro and label_regions:
      if target.ndim == 2:
        target, scores = target[None], scores[None]
      regions, counts = _label_regions(target)
      return scores, target, regions, counts
    return scores, target, None, None

  # Pass 1: totals, region sizes, histogram of the top 16 key bits.
  hist = np.zeros(1 << 16, np.int64)
  n_pos = n_neg = 0
  offsets, sizes = [], [np.zeros(1, np.int64)]
  n_regions = 0
  for i in range(n_chunks):
    scores, target, regions, counts = load(i, True)
    keys = float_keys(scores)
    hist += np.bincount(keys >> np.uint32(16), minlength=1 << 16)
    p = int(target.sum())
    n_pos += p
    n_neg += target.size - p
    offsets.append(n_regions)
    if regions is not None and counts:
      sizes.append(np.bincount(regions.ravel(), minlength=counts + 1)[1:])
      n_regions += counts
  weights = None
  if pro:
    # weight of a defect pixel = 1 / (number of regions * its region's size); index 0: background
    sizes = np.concatenate(sizes).astype(np.float64)
    weights = np.zeros(len(sizes))
    weights[1:] = 1.0 / (max(n_regions, 1) * sizes[1:])
  sweep = _Sweep(n_pos, n_neg, n_regions, fpr_limit, curve_points, pro)

  # Key ranges of at most ~budget pixels, from the highest scores down.
  ranges, hi, acc = [], (1 << 16) - 1, 0
  for b in range((1 << 16) - 1, -1, -1):
    acc += hist[b]
    if acc >= budget or b == 0:
      if acc:
        ranges.append((b, hi))
      hi, acc = b - 1, 0
  single = len(ranges) <= 1

  cached = None
  for lo_bin, hi_bin in ranges:
    parts = []
    for i in range(n_chunks):
      if single and n_chunks == 1 and cached is not None:
        scores, target, regions = cached
      else:
        scores, target, regions, _ = load(i, True)
        if single and n_chunks == 1:
          cached = (scores, target, regions)
      keys = float_keys(scores)
      aux = _chunk_aux(target, regions, offsets[i])
      if not single:
        top = keys >> np.uint32(16)
        sel = (top >= lo_bin) & (top <= hi_bin)
        keys, aux = keys[sel], aux[sel]
      if len(keys) == 0:
        continue
      packed = (keys.astype(np.uint64) << np.uint64(32)) | aux.astype(np.uint64)
      del keys, aux
      packed.sort()
      parts.append(_reduce_sorted(packed, weights))
      del packed
    if parts:
      keys, dn, dp, dw = _merge(parts)
      sweep.update(keys_to_float(keys), dn, dp, dw)
  return sweep


# ---------------------------------------------------------------------------------- public API

def _check_binary(labels, name):
  labels = np.asarray(labels)
  if labels.size and not np.isin(labels, (0, 1, False, True)).all():
    raise InputError(f"{name} must be 0/1, got values {np.unique(labels)[:5]}")
  return labels


def _image_sweep(labels, scores, curve_points=0):
  labels = _check_binary(labels, "labels").ravel()
  scores = np.asarray(scores).ravel()
  if labels.shape != scores.shape:
    raise InputError(f"{labels.size} labels but {scores.size} scores")
  if scores.dtype == np.float64 and not np.array_equal(scores.astype(np.float32), scores):
    # float64 scores that float32 would merge: sort them as they are (small sets: image scores).
    if np.isnan(scores).any():
      raise InputError("scores contain NaN; metrics need finite anomaly maps and scores")
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order].astype(bool)
    starts = np.flatnonzero(np.concatenate([[True], s[1:] != s[:-1]]))
    dp = np.add.reduceat(y, starts, dtype=np.int64) if len(s) else np.zeros(0, np.int64)
    dn = np.diff(np.concatenate([starts, [len(s)]])) - dp
    sweep = _Sweep(int(y.sum()), int((~y).sum()), 0, 0.3, curve_points)
    sweep.update(s[starts], dn, dp)
    return sweep
  return sweep_chunks(lambda i: (scores, labels), 1, pro=False, curve_points=curve_points)


def auroc(labels, scores) -> float:
  return _image_sweep(labels, scores).result()["auroc"]


def average_precision(labels, scores) -> float:
  return _image_sweep(labels, scores).result()["ap"]


def f1_max(labels, scores) -> float:
  return _image_sweep(labels, scores).result()["f1_max"]


def image_metrics(labels, scores) -> dict:
  """{"auroc", "ap", "f1_max", "f1_threshold", "n_pos", "n_neg"} of image-level scores."""
  return _image_sweep(labels, scores).result()


def _stack_chunks(masks, maps, budget):
  masks, maps = np.asarray(masks), np.asarray(maps)
  if masks.shape != maps.shape:
    raise InputError(f"masks {masks.shape} and anomaly maps {maps.shape} differ in shape; "
                     "resize the maps to the mask size first")
  if masks.ndim == 2:
    masks, maps = masks[None], maps[None]
  if masks.ndim != 3:
    raise InputError(f"expected masks and maps [N, H, W], got {masks.shape}")
  per = max(1, min(len(masks), budget // max(masks[0].size, 1) // 4))
  n = -(-len(masks) // per)
  return (lambda i: (maps[i * per:(i + 1) * per].astype(np.float32, copy=False),
                     masks[i * per:(i + 1) * per])), n


def pixel_metrics(masks, maps, fpr_limit: float = 0.3, pro: bool = True,
                  budget: int = DEFAULT_BUDGET) -> dict:
  """{"auroc", "ap", "f1_max", "f1_threshold", "aupro", "n_pos", "n_neg", "n_regions"} over all
  pixels of masks [N, H, W] {0,1} and maps [N, H, W] (float32)."""
  chunks, n = _stack_chunks(masks, maps, budget)
  return sweep_chunks(chunks, n, pro=pro, fpr_limit=fpr_limit, budget=budget).result()


def aupro(masks, maps, fpr_limit: float = 0.3, budget: int = DEFAULT_BUDGET) -> float:
  return pixel_metrics(masks, maps, fpr_limit, True, budget)["aupro"]


def curves(labels, scores, points: int = 500) -> dict:
  """Thinned ROC / PR curves {fpr, tpr, recall, precision, thresholds} for plotting."""
  return _image_sweep(labels, scores, curve_points=points).curves()
