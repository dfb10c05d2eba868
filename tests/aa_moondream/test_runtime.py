"""The runtime on random tiny weights: multi-crop maps for images larger than a crop, points per
anomalous region, the single-crop path unchanged for small images."""
import functools

import numpy as np
import pytest

from aajax.aa_moondream.exported import TrainedAAMoondream
from aajax.aa_moondream.runtime import AAMoondreamRuntime, map_peak
from aajax.aa_moondream.tokenizer import demo_tokenizer
from aajax.errors import InputError
from aajax.vlm import crops as crops_lib
from tests.aa_moondream.helpers import tiny_params


@functools.lru_cache(maxsize=1)
def runtime(threshold: float = 0.5) -> AAMoondreamRuntime:
  cfg, md, head = tiny_params()
  tok = demo_tokenizer(cfg.moondream.text.vocab_size, cfg.moondream.tokenizer)
  return AAMoondreamRuntime(TrainedAAMoondream(cfg, md, head, None, tok, {"kind": "head"},
                                               {"max_boxes": 3, "map_threshold": threshold}, {"init": "", "seed": 0}))


def image(h, w, seed=0):
  return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def test_an_image_within_one_crop_uses_the_global_crop_only():
  rt = runtime()
  im = image(30, 36)   # 32 px crops, 4 px patches, margin 1: a window of 24 px, margin-less 22 x 28
  auto, single = rt.analyse([im])[0], rt.analyse([im], crops="global")[0]
  assert auto["tiling"] == (1, 1)
  np.testing.assert_array_equal(auto["map"], single["map"])


def test_a_larger_image_averages_the_global_map_with_the_stitched_local_maps():
  from aajax.eval import maps as maps_lib
  rt = runtime()
  v = rt.cfg.moondream.vision
  im = image(80, 100)   # margin-less 72 x 92 -> 3 x 4 tiles of 24 px
  auto, single = rt.analyse([im])[0], rt.analyse([im], crops="global")[0]
  assert auto["tiling"] == (3, 4) and auto["map"].shape == (80, 100)
  assert auto["score"] == single["score"]   # the score is the global crop's
  # by hand: each local crop's map alone, stitched (tiles keep their share, overlaps dropped)
  tiles, tiling = crops_lib.overlap_crop_image(im, v)
  per_tile = np.stack([rt.source.of_crops(crops_lib.normalize(t[None]))[1][0] for t in tiles[1:]])
  g, m = rt.cfg.grid, v.overlap_margin
  assert per_tile.shape == (12, g, g)
  stitched = np.zeros((3 * (g - 2 * m) + 2 * m, 4 * (g - 2 * m) + 2 * m), np.float32)
  for i in range(3):
    for j in range(4):
      r0, c0 = (0 if i == 0 else m), (0 if j == 0 else m)
      r1, c1 = (g if i == 2 else g - m), (g if j == 3 else g - m)
      stitched[i * (g - 2 * m) + r0:i * (g - 2 * m) + r1, j * (g - 2 * m) + c0:j * (g - 2 * m) + c1] = \
          per_tile[i * 4 + j, r0:r1, c0:c1]
  tiled, _ = rt.tiled_map(im)
  np.testing.assert_allclose(tiled, stitched, rtol=1e-5, atol=1e-6)
  want = np.clip(0.5 * (maps_lib.upsample(single["map"], (80, 100)) + maps_lib.upsample(stitched, (80, 100))), 0, 1)
  np.testing.assert_allclose(auto["map"], want, rtol=1e-5, atol=1e-5)
  assert float(np.abs(auto["map"] - single["map"]).max()) > 1e-3
  with pytest.raises(InputError, match="crops must be"):
    rt.analyse([im], crops="local")


def test_map_peak_is_the_highest_pixel_inside_the_box():
  m = np.zeros((10, 20), np.float32)
  m[2, 3], m[7, 15], m[8, 16] = 0.6, 0.9, 0.8
  assert map_peak(m, (0.0, 0.0, 0.5, 0.5)) == {"x": 3.5 / 20, "y": 2.5 / 10}
  assert map_peak(m, (0.5, 0.5, 1.0, 1.0)) == {"x": 15.5 / 20, "y": 7.5 / 10}


def test_explain_with_points_gives_one_point_per_region():
  rt = runtime()
  out = rt.explain(image(80, 100, seed=1), max_tokens=4, points=True)
  assert len(out["points"]) == len(out["boxes"]) and len(out["region_points"]) <= len(out["boxes"])
  for p, b in zip(out["points"], out["boxes"]):
    assert b[0] <= p["x"] <= b[2] and b[1] <= p["y"] <= b[3]
  for p in out["region_points"]:
    assert 0 <= p["x"] <= 1 and 0 <= p["y"] <= 1
  assert "points" not in rt.explain(image(30, 30), max_tokens=2)
