"""Test-time maps and scores against the torch reference of test.py / metrics_eval."""
import jax
import numpy as np
import pytest
import torch

from aajax.anomaly import inference
from aajax.anomaly.model import AAModel
from tests.anomaly import torch_reference as ref
from tests.anomaly.test_aa_parity import aa_config, build, close, ids_for, images_for


@pytest.mark.parametrize("size,sigma", [(7, 1.0), (9, 1.5), (5, 0.8)])
def test_grid_blur_matches_kornia_reflect(size, sigma):
  x = np.random.default_rng(0).standard_normal((3, 12, 12)).astype(np.float32)
  want = ref.gaussian_blur(torch.from_numpy(x)[:, None], size, sigma)[:, 0]
  got = inference.grid_blur(x, size, sigma)
  close(got, want, atol=1e-6)


@pytest.mark.parametrize("domain", ["industrial", "medical"])
@pytest.mark.parametrize("name", ["siglip", "clip_gelu"])
def test_predicted_maps_and_scores_match_reference(name, domain, tmp_path):
  cfg = aa_config(name)
  ref_model, model, params = build(cfg, tmp_path)
  images = images_for(cfg, batch=3)
  ids = ids_for(cfg, (2, 5, cfg.backbone.text.max_len))
  class_ids = np.array([1, 0, 1], np.int32)
  blur = inference.DOMAIN_BLUR[domain]
  with torch.no_grad():
    table = ref_model.anchors(torch.from_numpy(ids), 2)
    seg, det = ref_model.image_features(torch.from_numpy(images).permute(0, 3, 1, 2))
    want_maps, want_det = ref.test_maps(seg, det, table[torch.from_numpy(class_ids).long()], cfg.image_size, *blur)
    want_norm, want_img = ref.class_scores(want_maps, want_det, domain == "medical")
  with jax.default_matmul_precision("highest"):
    got_table = model.apply({"params": params}, ids.astype(np.int32), 2, method=AAModel.text_anchors)
    maps, det_scores = inference.make_predict_fn(model, domain)(params, got_table, images, class_ids)
  close(maps, want_maps, atol=2e-3, rtol=1e-4)  # maps are 100x-scaled logit differences
  close(det_scores, want_det)
  norm, img = inference.class_scores(np.asarray(maps), np.asarray(det_scores), domain)
  close(norm, want_norm, atol=1e-4)
  close(img, want_img, atol=1e-4)


def test_unknown_domain_is_a_config_error():
  from aajax.errors import ConfigError
  with pytest.raises(ConfigError, match="unknown domain"):
    inference.domain_blur("space")
