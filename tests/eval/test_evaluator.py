"""The streaming evaluator gives the numbers of a direct computation on full-resolution maps."""
import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from aajax.errors import InputError
from aajax.eval import maps as P
from aajax.eval import metrics
from aajax.eval.evaluator import Evaluator


def test_matches_direct_computation():
  rng = np.random.default_rng(0)
  n, size = 10, 32
  class_ids = np.array([0] * 6 + [1] * 4)
  masks = np.zeros((n, size, size), np.uint8)
  for i in range(1, n, 2):
    y, x = rng.integers(0, 24, 2)
    masks[i, y:y + 6, x:x + 5] = 1
  labels = (masks.reshape(n, -1).max(1) > 0).astype(int)
  grid = rng.normal(size=(n, 8, 8)).astype(np.float32)
  grid += labels[:, None, None] * 0.5
  det = rng.normal(size=n) + labels
  ev = Evaluator(["a", "b"], ["Industrial", "Medical"], size, budget=3000)
  valid = np.ones(4, bool)
  for s in range(0, n, 4):
    b = slice(s, s + 4)
    pad = 4 - len(class_ids[b])
    stack = lambda x: np.concatenate([x[b], x[b][:1].repeat(pad, 0)]) if pad else x[b]
    ev.add(stack(class_ids), stack(labels), stack(grid), stack(masks), stack(det),
           valid=np.arange(4) < 4 - pad)
  assert len(ev) == n
  res = ev.results(curves=True)
  full = P.upsample(grid, size).astype(np.float32)
  for c, name in enumerate(["a", "b"]):
    idx = class_ids == c
    px = metrics.pixel_metrics(masks[idx], full[idx])
    assert res[name]["pixel_auroc"] == pytest.approx(px["auroc"], rel=1e-12)
    assert res[name]["pixel_aupro"] == pytest.approx(px["aupro"], rel=1e-12)
    assert res[name]["pixel_ap"] == pytest.approx(px["ap"], rel=1e-12)
    mx, lo = full[idx].max(axis=(1, 2)), full[idx].min()
    pix = (mx - lo) / (mx.max() - lo)
    d = (det[idx] - det[idx].min()) / (det[idx].max() - det[idx].min())
    score = pix if c == 1 else 0.5 * pix + 0.5 * d
    assert res[name]["image_auroc"] == pytest.approx(roc_auc_score(labels[idx], score), rel=1e-9)
    assert res[name]["n_images"] == idx.sum() and "pixel" in res[name]["curves"]
  heat = ev.normalized_maps([0, 7])
  assert heat.shape == (2, size, size) and heat.min() >= 0 and heat.max() <= 1


def test_one_label_class_and_bad_input():
  ev = Evaluator(["only_bad"], {"only_bad": "Medical"}, 16)
  masks = np.ones((2, 16, 16), np.uint8)
  ev.add([0, 0], [1, 1], np.random.rand(2, 4, 4), masks)
  r = ev.results()["only_bad"]
  assert math.isnan(r["image_auroc"]) and math.isnan(r["pixel_auroc"])
  with pytest.raises(InputError, match="evaluation size"):
    ev.add([0], [1], np.zeros((1, 4, 4)), np.zeros((1, 8, 8)))
  with pytest.raises(InputError, match="NaN"):
    ev.add([0], [1], np.full((1, 4, 4), np.nan), np.zeros((1, 16, 16)))
  with pytest.raises(InputError, match="nothing to evaluate"):
    Evaluator(["x"], ["Industrial"], 8).results()
