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
region id pack into one uint64 that sorts in place (8 bytes a pixel, no argsort). A first pass over
the data (given as chunks) histograms the top 16 key bits; then each range of keys holding at most
`budget` pixels is gathered from the chunks into one preallocated array, sorted, and swept from the
top in blocks of distinct scores. Peak extra memory is ~8 bytes x budget (default 2^25 pixels:
256 MiB) plus one chunk's temporaries, whatever the set size; the price is one pass over the data
per range. The result is exact, not binned.

One-label sets (only normal or only anomalous samples) have no AUROC: the metric is NaN and
`n_pos` / `n_neg` in the result say why; reports print "n/a".
"""
import math

import numpy as np
import scipy.ndimage

from aajax.errors import InputError

DEFAULT_BUDGET = 1 << 25
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

_BLOCK = 1 << 20   # distinct scores reduced and swept at a time: bounds the temporaries


def _reduce_sorted(packed: np.ndarray, weights):
  """Sorted uint64 (key << 32 | region) of whole key groups -> distinct keys descending with
  (dn, dp, dw)."""
  keys = (packed >> np.uint64(32)).astype(np.uint32)
  starts = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]]))
  region = (packed & np.uint64(0xFFFFFFFF)).astype(np.uint32)
  dp = np.add.reduceat(region > 0, starts, dtype=np.int64)
  dn = np.diff(np.append(starts, len(keys))) - dp
  dw = np.add.reduceat(weights[region], starts) if weights is not None else None
  rev = slice(None, None, -1)
  return keys[starts][rev], dn[rev], dp[rev], (dw[rev] if dw is not None else None)


def _sweep_sorted(sweep, packed, weights):
  """Feed an ascending-sorted packed array to the sweep from its top, in blocks that never split
  the pixels of one score (a tie must stay one point of the curve)."""
  end = len(packed)
  while end > 0:
    start = max(end - _BLOCK, 0)
    if start > 0:  # move the cut down to the first pixel of that score
      first_key = packed[start] >> np.uint64(32)
      start = int(np.searchsorted(packed, first_key << np.uint64(32), side="left"))
    keys, dn, dp, dw = _reduce_sorted(packed[start:end], weights)
    sweep.update(keys_to_float(keys), dn, dp, dw)
    end = start


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


def sweep_chunks(chunks, n_chunks: int, *, pro: bool = True, fpr_limit: float = 0.3,
                 budget: int = DEFAULT_BUDGET, curve_points: int = 0):
  """Exact metrics over data given as `chunks(i) -> (scores float [..], labels/masks {0,1} [..])`
  for i < n_chunks (called once per pass; must return the same data each time). With pro, chunks
  are image stacks [n, H, W] and AUPRO is computed. Returns the `_Sweep` (`.result()`)."""
  if not 0 < fpr_limit <= 1:
    raise InputError(f"fpr_limit must be in (0, 1], got {fpr_limit}")

  def load(i):
    """(uint32 keys, uint32 region-or-label ids, region count) of chunk i, ids local to it."""
    scores, target = chunks(i)
    scores, target = np.asarray(scores), np.asarray(target)
    if scores.shape != target.shape:
      raise InputError(f"scores {scores.shape} and ground truth {target.shape} differ in shape")
    keys = float_keys(scores)
    if not pro:
      return keys, (target != 0).astype(np.uint32).ravel(), 0
    target = target.reshape((-1,) + target.shape[-2:]) if target.ndim >= 2 else target[None, None]
    regions, k = _label_regions(target != 0)
    return keys, regions.ravel(), k

  # Pass 1: totals, region sizes, histogram of the top 16 key bits.
  hist = np.zeros(1 << 16, np.int64)
  n_pos = n_neg = n_regions = 0
  offsets, sizes = [], [np.zeros(1, np.int64)]
  for i in range(n_chunks):
    keys, ids, k = load(i)
    hist += np.bincount(keys >> np.uint32(16), minlength=1 << 16)
    p = int(np.count_nonzero(ids))
    n_pos, n_neg = n_pos + p, n_neg + len(ids) - p
    offsets.append(n_regions)
    if k:
      sizes.append(np.bincount(ids, minlength=k + 1)[1:])
      n_regions += k
  weights = None
  if pro:   # weight of a defect pixel = 1 / (n_regions * its region's size); 0 for background
    sizes = np.concatenate(sizes).astype(np.float64)
    weights = np.zeros(len(sizes))
    weights[1:] = 1.0 / (max(n_regions, 1) * sizes[1:])
  sweep = _Sweep(n_pos, n_neg, n_regions, fpr_limit, curve_points, pro)

  # Key ranges of at most ~budget pixels (a single 16-bit bin may exceed it), highest first.
  ranges, hi, acc = [], (1 << 16) - 1, 0
  for b in range((1 << 16) - 1, -1, -1):
    if acc and acc + hist[b] > budget:
      ranges.append((b + 1, hi, acc))
      hi, acc = b, 0
    acc += hist[b]
  if acc:
    ranges.append((0, hi, acc))

  # One pass per range: gather its pixels into one preallocated array, sort in place, sweep.
  for lo_bin, hi_bin, count in ranges:
    packed = np.empty(int(count), np.uint64)
    fill = 0
    for i in range(n_chunks):
      keys, ids, _ = load(i)
      if pro and offsets[i]:
        ids[ids > 0] += np.uint32(offsets[i])
      if len(ranges) > 1:
        top = keys >> np.uint32(16)
        sel = (top >= lo_bin) & (top <= hi_bin)
        keys, ids = keys[sel], ids[sel]
      n = len(keys)
      np.left_shift(keys, 32, out=packed[fill:fill + n], dtype=np.uint64)
      packed[fill:fill + n] |= ids
      fill += n
      del keys, ids
    packed.sort()
    _sweep_sorted(sweep, packed, weights)
    del packed
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
  per = max(1, min(len(masks), budget // max(masks[0].size, 1) // 8))
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
