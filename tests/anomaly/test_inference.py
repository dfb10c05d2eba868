"""Test-time maps and scores against the torch reference of test.py / metrics_eval."""
import jax
import numpy as np
import pytest
import torch

from aajax.anomaly import inference
from aajax.anomaly.model import AAModel
from aajax.eval import maps as maps_lib
from tests.anomaly import torch_reference as ref
from tests.anomaly.test_aa_parity import aa_config, build, close, ids_for, images_for


@pytest.mark.parametrize("size,sigma", [(7, 1.0), (9, 1.5), (5, 0.8)])
def test_grid_blur_matches_kornia_reflect(size, sigma):
  x = np.random.default_rng(0).standard_normal((3, 12, 12)).astype(np.float32)
  want = ref.gaussian_blur(torch.from_numpy(x)[:, None], size, sigma)[:, 0]
  close(maps_lib.blur_grid(x, (size, sigma)), want, atol=1e-6)


@pytest.mark.parametrize("domain", ["Industrial", "Medical"])
@pytest.mark.parametrize("name", ["siglip", "clip_gelu"])
def test_predicted_maps_and_scores_match_reference(name, domain, tmp_path):
  cfg = aa_config(name)
  ref_model, model, params = build(cfg, tmp_path)
  images = images_for(cfg, batch=3)
  ids = ids_for(cfg, (2, 5, cfg.backbone.text.max_len))
  class_ids = np.array([1, 0, 1], np.int32)
  with torch.no_grad():
    table = ref_model.anchors(torch.from_numpy(ids), 2)
    seg, det = ref_model.image_features(torch.from_numpy(images).permute(0, 3, 1, 2))
    want_maps, want_det = ref.test_maps(seg, det, table[torch.from_numpy(class_ids).long()], cfg.image_size,
                                        *maps_lib.GRID_BLUR[domain])
    _, want_img = ref.class_scores(want_maps, want_det, domain == "Medical")
  with jax.default_matmul_precision("highest"):
    got_table = model.apply({"params": params}, ids.astype(np.int32), 2, method=AAModel.text_anchors)
    maps, det_scores = inference.make_predict_fn(model, domain)(params, got_table, images, class_ids)
  close(maps, want_maps, atol=2e-3, rtol=1e-4)  # maps are 100x-scaled logit differences
  close(det_scores, want_det)
  maps = np.asarray(maps)
  img = maps_lib.image_scores(maps.reshape(3, -1).max(1), np.asarray(det_scores), np.zeros(3, int), [domain],
                              map_stats=np.array([[maps.min(), maps.max()]]))
  close(img, want_img, atol=1e-4)


def test_probability_maps_are_the_training_probabilities(tmp_path):
  cfg = aa_config("siglip")
  ref_model, model, params = build(cfg, tmp_path)
  images = images_for(cfg, batch=2)
  ids = ids_for(cfg, (2, 5, cfg.backbone.text.max_len))
  with torch.no_grad():
    table = ref_model.anchors(torch.from_numpy(ids), 2)
    seg, det = ref_model.image_features(torch.from_numpy(images).permute(0, 3, 1, 2))
    anchors = table[[0, 1]]
    want = sum(ref.similarity_map(f, anchors, cfg.image_size)[:, 1] for f in seg) / len(seg)
    want_det = torch.softmax((det[:, None] @ anchors)[:, 0], -1)[:, 1]
  with jax.default_matmul_precision("highest"):
    got_table = model.apply({"params": params}, ids.astype(np.int32), 2, method=AAModel.text_anchors)
    pix, img = inference.make_probability_fn(model)(params, got_table[np.array([0, 1])], images)
  close(pix, want, atol=1e-5)
  close(img, want_det, atol=1e-5)


def test_unknown_domain_is_an_error():
  from aajax.errors import AajaxError
  with pytest.raises(AajaxError, match="unknown domain"):
    inference.make_grid_fn(None, "space")
