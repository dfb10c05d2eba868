"""Small models and images for the server tests: the demo Moondream and a tiny random AA model dir."""
import types

import numpy as np
from PIL import Image

from aajax.serve.images import data_url


def image(seed: int = 0, size=(60, 80)) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, size + (3,), dtype=np.uint8)


def image_url(seed: int = 0, size=(60, 80), format: str = "PNG") -> str:
  return data_url(image(seed, size), format)


def write_image(path, seed: int = 0, size=(60, 80)) -> str:
  Image.fromarray(image(seed, size)).save(path)
  return str(path)


def write_tiny_aa(path: str) -> str:
  """A random AA model directory (4-block SigLIP tower at 32 px, classes brick / tile), written as
  training exports it; params drawn with numpy from the shapes (no initialiser compile)."""
  import jax
  import ml_collections
  from aajax.anomaly import recipe
  from aajax.anomaly.model import init_params
  from aajax.anomaly.tasks import write_model
  m = recipe.model_defaults()
  m.tower = ml_collections.ConfigDict(dict(family="siglip", width=32, depth=4, heads=2, mlp_dim=64, patch=8,
                                           image_size=32, text_len=8, vocab=64))
  m.image_size = 32
  m.text_adapt_until = 1
  cfg = recipe.aa_config(m)
  shapes = jax.eval_shape(lambda rng: init_params(cfg, rng), jax.random.PRNGKey(0))
  rng = np.random.default_rng(0)

  def draw(path, s):
    if len(s.shape) < 2:
      scale = str(getattr(path[-1], "key", "")) == "scale"
      return (0.02 * rng.standard_normal(s.shape) + (1.0 if scale else 0.0)).astype(s.dtype)
    return (rng.standard_normal(s.shape) * s.shape[-2] ** -0.5).astype(s.dtype)
  params = jax.tree_util.tree_map_with_path(draw, shapes)
  anchors = rng.standard_normal((2, cfg.embed_dim, 2)).astype(np.float32)
  anchors /= np.linalg.norm(anchors, axis=1, keepdims=True)
  split = types.SimpleNamespace(class_names=["brick", "tile"], real_names=["brick", "tile"],
                                domains=["Industrial", "Industrial"])
  write_model(path, cfg, params, recipe.tokenizer_spec(cfg, m), split, anchors, "siglip")
  return path
