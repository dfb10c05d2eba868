"""Tables, heatmap strips and curve plots are written, readable, and say n/a for one-label classes."""
import json
import math

import numpy as np
from PIL import Image

from aajax.eval import metrics, report


def test_tables_with_mean_and_undefined(tmp_path):
  results = {"a": {"image_auroc": 0.9, "pixel_auroc": 0.8, "n_pos": 3},
             "b": {"image_auroc": math.nan, "pixel_auroc": 0.6, "n_pos": 0}}
  paths = report.write_tables(results, str(tmp_path))
  md = open(paths["md"]).read()
  assert "| a | 90.00 | 80.00 |" in md and "| b | n/a | 60.00 |" in md
  assert "**90.00**" in md and "**70.00**" in md and "n/a for b" in md
  doc = json.load(open(paths["json"]))
  assert doc["classes"]["b"]["image_auroc"] is None and doc["mean"]["pixel_auroc"] == 0.7
  rows = open(paths["csv"]).read().splitlines()
  assert rows[0] == "class,image_auroc,pixel_auroc" and rows[-1] == "mean,90.00,70.00"


def test_heatmaps_and_curves(tmp_path):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (2, 24, 24, 3), dtype=np.uint8)
  masks = np.zeros((2, 24, 24), np.uint8)
  masks[1, 5:9, 5:9] = 1
  maps = rng.random((2, 12, 12)).astype(np.float32)   # lower resolution: resized for display
  paths = report.save_heatmaps(images, masks, maps, ["cls/x0", "cls/x1"], str(tmp_path))
  strip = np.asarray(Image.open(paths[1]))
  assert strip.shape == (24, 72, 3)
  np.testing.assert_array_equal(strip[:, :24], images[1])
  assert strip[6, 24 + 6, 0] > images[1][6, 6, 0] * 0.5 and (strip[:, 24:48] != images[1]).any()
  y = rng.integers(0, 2, 200)
  c = metrics.curves(y, rng.random(200) + y)
  out = report.plot_curves({"cls": c, "other": c}, str(tmp_path), "image")
  for p in out.values():
    assert Image.open(p).size == (600, 500)
