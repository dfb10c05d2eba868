"""AA-CLIP inference as the released `test.py` computes it.

Per image and tapped level: s = scale * <patch, [t_normal, t_abnormal]> on the patch grid and the
map (s_abnormal + 1 - s_normal) / 2 (a logit difference, no softmax); each level is blurred on the
grid (kernel 7, sigma 1 for Industrial data; 9, 1.5 for Medical), upsampled bilinearly
(align_corners=True) and the levels summed (`aajax.eval.maps.combine_levels`, which sums on the grid
first: both steps are linear). The detection score is (<det, t_abnormal> + 1) / 2. The per-class
normalisation and image scores are `aajax.eval.maps.image_scores` / `aajax.eval.evaluator`.
"""
import jax
import jax.numpy as jnp

from aajax.anomaly.losses import upsampled_margin
from aajax.anomaly.model import AAModel
from aajax.eval import maps as maps_lib


def level_maps(model: AAModel, params, images, anchors):
  """images [B, S, S, 3], anchors [B, E, 2] -> ([levels, B, g, g] grid maps, [B] detection scores)."""
  feats = model.apply({"params": params}, images, method=AAModel.image_features)
  g = model.cfg.grid
  levels = [maps_lib.score_map(model.patch_logits(f, anchors)).reshape(-1, g, g) for f in feats["seg"]]
  det = (jnp.einsum("be,be->b", feats["det"], anchors[..., 1]) + 1) / 2
  return jnp.stack(levels), det


def make_grid_fn(model: AAModel, domain: str = "Industrial"):
  """Jitted (params, anchor_table [C, E, 2], images, class_ids) -> (blurred level-sum on the grid
  [B, g, g], detection scores [B]); upsampling is left to the consumer (linear, done per chunk)."""
  maps_lib.blur_grid(jnp.zeros((1, 3, 3)), domain)  # validate the domain now, not inside jit

  def grid(params, anchor_table, images, class_ids):
    levels, det = level_maps(model, params, images, anchor_table[class_ids])
    return maps_lib.blur_grid(levels.sum(axis=0), domain), det

  return jax.jit(grid)


def make_predict_fn(model: AAModel, domain: str = "Industrial"):
  """Jitted (params, anchor_table, images, class_ids) -> (maps [B, S, S], detection scores [B])."""
  grid_fn = make_grid_fn(model, domain)

  def predict(params, anchor_table, images, class_ids):
    grid, det = grid_fn(params, anchor_table, images, class_ids)
    return maps_lib.upsample(grid, images.shape[1]), det

  return jax.jit(predict)


def make_probability_fn(model: AAModel):
  """Jitted (params, anchors [B, E, 2], images) -> (pixel probabilities [B, S, S], image probabilities [B]).

  For a user's own images there are no class statistics to normalise with, so inference reports
  what the training losses calibrate: the abnormal-channel softmax of each level's map
  (upsampled, as in training) averaged over the levels, and the softmax of the detection logits.
  """

  def probabilities(params, anchors, images):
    feats = model.apply({"params": params}, images, method=AAModel.image_features)
    g, size = model.cfg.grid, images.shape[1]
    pix = [jax.nn.sigmoid(upsampled_margin(model.patch_logits(f, anchors), (g, g), size)) for f in feats["seg"]]
    det = jax.nn.softmax(jnp.einsum("be,bek->bk", feats["det"], anchors), axis=-1)[:, 1]
    return sum(pix) / len(pix), det

  return jax.jit(probabilities)
