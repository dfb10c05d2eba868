"""Metrics against scikit-learn (random data, heavy ties) and AUPRO against a direct reference."""
import math

import numpy as np
import pytest
import scipy.ndimage
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from aajax.errors import InputError
from aajax.eval import metrics as M


def sk_f1_max(y, s):
  p, r, _ = precision_recall_curve(y, s)
  f1 = np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-300), 0)
  return f1.max()


def aupro_reference(masks, maps, fpr_limit=0.3):
  """Straight from the definition: every distinct threshold, every region, one at a time."""
  regions, background = [], []
  for m, s in zip(masks, maps):
    lab, k = scipy.ndimage.label(m, structure=np.ones((3, 3)))
    regions += [s[lab == r] for r in range(1, k + 1)]
    background.append(s[m == 0])
  background = np.concatenate(background)
  xs, ys = [0.0], [0.0]
  for t in np.unique(maps)[::-1]:
    xs.append(np.mean(background >= t))
    ys.append(np.mean([np.mean(r >= t) for r in regions]))
  area = 0.0
  for i in range(1, len(xs)):
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    if x1 <= fpr_limit:
      area += (x1 - x0) * (y0 + y1) / 2
    else:
      y_lim = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
      area += (fpr_limit - x0) * (y_lim + y0) / 2
      break
  return area / fpr_limit


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ties", [False, True])
def test_image_metrics_equal_sklearn(dtype, ties):
  rng = np.random.default_rng(1)
  for trial in range(5):
    n = int(rng.integers(20, 2000))
    y = rng.integers(0, 2, n)
    s = (rng.normal(size=n) + y * rng.uniform(0, 2)).astype(dtype)
    if ties:
      s = np.round(s, 1).astype(dtype)  # many equal scores with mixed labels
    out = M.image_metrics(y, s)
    assert out["auroc"] == pytest.approx(roc_auc_score(y, s), rel=1e-12, abs=1e-12)
    assert out["ap"] == pytest.approx(average_precision_score(y, s), rel=1e-12, abs=1e-12)
    assert out["f1_max"] == pytest.approx(sk_f1_max(y, s), rel=1e-12)
    assert out["n_pos"] == y.sum() and out["n_neg"] == n - y.sum()


def test_f1_threshold_reaches_f1_max():
  rng = np.random.default_rng(2)
  y = rng.integers(0, 2, 500)
  s = rng.normal(size=500) + y
  out = M.image_metrics(y, s)
  pred = s >= out["f1_threshold"]
  tp = np.sum(pred & (y == 1))
  assert 2 * tp / (y.sum() + pred.sum()) == pytest.approx(out["f1_max"])


def test_all_tied_and_perfect():
  y = np.array([0, 1, 0, 1])
  assert M.auroc(y, np.zeros(4, np.float32)) == 0.5
  assert M.auroc(y, np.array([0, 1, 0, 1.0])) == 1.0
  assert M.auroc(y, np.array([1, 0, 1, 0.0])) == 0.0
  assert M.average_precision(y, np.zeros(4)) == pytest.approx(average_precision_score(y, np.zeros(4)))
  # -0.0 and 0.0 are the same score
  assert M.auroc([0, 1], np.array([-0.0, 0.0], np.float32)) == 0.5


def test_one_label_is_nan_not_a_crash():
  out = M.image_metrics(np.ones(5, int), np.arange(5.0))
  assert math.isnan(out["auroc"]) and out["n_neg"] == 0
  out = M.image_metrics(np.zeros(5, int), np.arange(5.0))
  assert math.isnan(out["auroc"]) and math.isnan(out["ap"]) and math.isnan(out["f1_max"])
  px = M.pixel_metrics(np.zeros((2, 8, 8), np.uint8), np.random.rand(2, 8, 8))
  assert math.isnan(px["auroc"]) and math.isnan(px["aupro"]) and px["n_regions"] == 0


def _blobs(rng, n=6, size=24):
  masks = np.zeros((n, size, size), np.uint8)
  for i in range(n):
    for _ in range(int(rng.integers(0, 4))):
      y, x = rng.integers(0, size - 4, 2)
      h, w = rng.integers(1, 6, 2)
      masks[i, y:y + h, x:x + w] = 1
  return masks


@pytest.mark.parametrize("budget", [M.DEFAULT_BUDGET, 700, 60])
def test_pixel_metrics_and_aupro_exact(budget):
  """Same numbers in one sorted range and in many (budget forces the multi-pass sweep)."""
  rng = np.random.default_rng(3)
  masks = _blobs(rng)
  maps = (rng.normal(size=masks.shape) + 1.2 * masks).astype(np.float32)
  maps[:2] = np.round(maps[:2], 1)  # ties
  out = M.pixel_metrics(masks, maps, budget=budget)
  y, s = masks.ravel(), maps.ravel()
  assert out["auroc"] == pytest.approx(roc_auc_score(y, s), rel=1e-12)
  assert out["ap"] == pytest.approx(average_precision_score(y, s), rel=1e-12)
  assert out["f1_max"] == pytest.approx(sk_f1_max(y, s), rel=1e-12)
  for limit in (0.3, 0.05, 1.0):
    assert M.aupro(masks, maps, limit, budget=budget) == pytest.approx(
        aupro_reference(masks, maps, limit), rel=1e-9)


def test_aupro_counts_regions_per_image_with_8_connectivity():
  masks = np.zeros((2, 10, 10), np.uint8)
  masks[0, 1, 1] = masks[0, 2, 2] = 1      # diagonal neighbours: one region
  masks[1, 5:7, 5:7] = 1
  maps = np.random.default_rng(0).random(masks.shape).astype(np.float32)
  assert M.pixel_metrics(masks, maps)["n_regions"] == 2
  perfect = masks.astype(np.float32)
  assert M.aupro(masks, perfect) == pytest.approx(1.0)


def test_bad_inputs():
  with pytest.raises(InputError, match="NaN"):
    M.auroc([0, 1], np.array([np.nan, 1.0]))
  with pytest.raises(InputError, match="shape"):
    M.pixel_metrics(np.zeros((2, 4, 4)), np.zeros((2, 5, 5)))
  with pytest.raises(InputError, match="0/1"):
    M.auroc([0, 2], [0.1, 0.2])
  with pytest.raises(InputError, match="fpr_limit"):
    M.aupro(np.zeros((1, 4, 4)), np.zeros((1, 4, 4)), fpr_limit=0)


def test_curves_for_plots():
  rng = np.random.default_rng(4)
  y = rng.integers(0, 2, 3000)
  s = rng.normal(size=3000) + y
  c = M.curves(y, s, points=100)
  assert c["fpr"][0] == 0 and c["fpr"][-1] == 1 and c["tpr"][-1] == 1
  assert np.all(np.diff(c["fpr"]) >= 0) and len(c["fpr"]) < 300
  assert np.trapezoid(c["tpr"], c["fpr"]) == pytest.approx(M.auroc(y, s), abs=0.01)
