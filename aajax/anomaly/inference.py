"""AA-CLIP inference as the released `test.py` computes it.

Per image and tapped level: s = scale * <patch, [t_normal, t_abnormal]> on the patch grid, a map
(s_abnormal + 1 - s_normal) / 2 (a logit difference, no softmax), a Gaussian blur on the grid with
reflect borders (kernel 7, sigma 1 for industrial data; 9, 1.5 for medical), bilinear upsampling
(align_corners=True) to the input size, and the sum over levels. The detection score is
(<det, t_abnormal> + 1) / 2.

Per class (`class_scores`): the pixel maps of all the class's images are min-max normalised with
one global min and max, the detection scores likewise, and the image score is
0.5 * max(normalised map) + 0.5 * normalised detection score (industrial) or max(normalised map)
(medical). These statistics come from the test set itself, as the field's protocol does.
"""
import jax
import jax.numpy as jnp
import numpy as np

from aajax.anomaly.model import AAModel
from aajax.errors import ConfigError
from aajax.nn.resize import resize_2d

DOMAIN_BLUR = {"industrial": (7, 1.0), "medical": (9, 1.5)}


def gaussian_kernel(size: int, sigma: float) -> np.ndarray:
  """Normalised 1-D Gaussian taps centred on the middle tap (kornia's `get_gaussian_kernel1d`)."""
  if size % 2 == 0:
    raise ConfigError(f"Gaussian kernel size must be odd, got {size}")
  x = np.arange(size, dtype=np.float64) - size // 2
  k = np.exp(-(x ** 2) / (2.0 * sigma ** 2))
  return (k / k.sum()).astype(np.float32)


def grid_blur(maps, size: int, sigma: float):
  """Separable Gaussian blur of [B, H, W] maps with reflect borders (no edge repeat)."""
  k = jnp.asarray(gaussian_kernel(size, sigma))
  pad = size // 2
  x = jnp.pad(maps, ((0, 0), (pad, pad), (pad, pad)), mode="reflect")
  h, w = maps.shape[1:]
  rows = sum(k[i] * x[:, i:i + h, :] for i in range(size))
  return sum(k[j] * rows[:, :, j:j + w] for j in range(size))


def domain_blur(domain: str) -> tuple[int, float]:
  if domain not in DOMAIN_BLUR:
    raise ConfigError(f"unknown domain {domain!r}; expected one of {sorted(DOMAIN_BLUR)}")
  return DOMAIN_BLUR[domain]


def level_maps(model: AAModel, params, images, anchors):
  """images [B, S, S, 3], anchors [B, E, 2] -> ([B, levels, g, g] grid maps, [B] detection scores)."""
  feats = model.apply({"params": params}, images, method=AAModel.image_features)
  g = model.cfg.grid
  maps = []
  for f in feats["seg"]:
    s = model.cfg.score_scale * jnp.einsum("bne,bek->bnk", f, anchors)
    maps.append(((s[..., 1] + 1 - s[..., 0]) / 2).reshape(-1, g, g))
  det = (jnp.einsum("be,be->b", feats["det"], anchors[..., 1]) + 1) / 2
  return jnp.stack(maps, axis=1), det


def pixel_maps(grid_maps, image_size: int, domain: str):
  """[B, levels, g, g] -> [B, S, S]: blur each level on the grid, upsample, sum the levels."""
  size, sigma = domain_blur(domain)
  b, n_levels, g, _ = grid_maps.shape
  blurred = grid_blur(grid_maps.reshape(b * n_levels, g, g), size, sigma)
  up = resize_2d(blurred[..., None], (image_size, image_size), "bilinear_corners")[..., 0]
  return up.reshape(b, n_levels, image_size, image_size).sum(axis=1)


def make_predict_fn(model: AAModel, domain: str = "industrial"):
  """Jitted (params, anchor_table [C, E, 2], images, class_ids) -> (maps [B, S, S], det [B])."""
  domain_blur(domain)

  def predict(params, anchor_table, images, class_ids):
    grid_maps, det = level_maps(model, params, images, anchor_table[class_ids])
    return pixel_maps(grid_maps, images.shape[1], domain), det

  return jax.jit(predict)


def min_max(x: np.ndarray) -> np.ndarray:
  lo, hi = float(np.min(x)), float(np.max(x))
  return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)


def class_scores(maps: np.ndarray, det: np.ndarray, domain: str) -> tuple[np.ndarray, np.ndarray]:
  """One class's maps [N, S, S] and detection scores [N] -> (normalised maps, image scores [N])."""
  domain_blur(domain)
  norm_maps = min_max(maps.astype(np.float32))
  peak = norm_maps.reshape(len(norm_maps), -1).max(axis=1)
  if domain == "medical":
    return norm_maps, peak
  return norm_maps, 0.5 * peak + 0.5 * min_max(det.astype(np.float32))


def make_probability_fn(model: AAModel):
  """Jitted (params, anchors [B, E, 2], images) -> (pixel probabilities [B, S, S], image probabilities [B]).

  For a user's own images there are no class statistics to normalise with, so inference reports
  what the training losses calibrate: the abnormal-channel softmax of each level's map
  (upsampled, as in training) averaged over the levels, and the softmax of the detection logits.
  """
  from aajax.anomaly.losses import seg_probabilities

  def probabilities(params, anchors, images):
    feats = model.apply({"params": params}, images, method=AAModel.image_features)
    g, size = model.cfg.grid, images.shape[1]
    pix = [seg_probabilities(model.patch_logits(f, anchors), (g, g), size)[..., 1] for f in feats["seg"]]
    det = jax.nn.softmax(jnp.einsum("be,bek->bk", feats["det"], anchors), axis=-1)[:, 1]
    return sum(pix) / len(pix), det

  return jax.jit(probabilities)
