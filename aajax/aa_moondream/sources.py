"""Where the anomaly result handed to the decoder comes from: AA-Moondream's own head, or (the hybrid
path) a trained AA-CLIP / AA-SigLIP model directory from `aajax.anomaly`.

A source maps uint8 RGB images to (image scores [B] in [0, 1], pixel probability maps [B, h, w] in
[0, 1]); `context_of` turns one result into what the decoder is conditioned on: the score and the
boxes of the map's regions above `threshold` (`qa.boxes_from_mask`).
"""
import jax
import numpy as np

from aajax.aa_moondream import qa as qa_lib
from aajax.data.transforms import preprocess
from aajax.errors import ConfigError


def crops_of(images, size: int) -> np.ndarray:
  """uint8 RGB images (any sizes) -> normalised single crops [B, size, size, 3] in [-1, 1]."""
  return np.stack([preprocess(np.asarray(im), size, "siglip") for im in images])


def bucket(n: int, cap: int) -> int:
  """The smallest power of two >= n, at most cap: batch sizes padded to few compiled shapes."""
  return min(cap, 1 << max(0, (n - 1).bit_length()))


class HeadSource:
  """AA-Moondream's anomaly head (the fast path)."""
  spec = {"kind": "head"}

  def __init__(self, model, params, batch_size: int = 8):
    from aajax.aa_moondream.model import AAMoondream
    self.size, self.batch_size = model.cfg.image_size, batch_size
    self._fn = jax.jit(lambda p, x: model.apply({"params": p}, x, method=AAMoondream.probabilities))
    self.params = params

  def __call__(self, images):
    parts = [self.of_crops(crops_of(images[i:i + self.batch_size], self.size))   # a batch of crops at a time
             for i in range(0, len(images), self.batch_size)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

  def of_crops(self, crops):
    """Normalised crops [B, S, S, 3] -> (scores [B], maps [B, g, g]), in batches of few shapes."""
    scores, maps = [], []
    for i in range(0, len(crops), self.batch_size):
      chunk = crops[i:i + self.batch_size]
      pad = bucket(len(chunk), self.batch_size) - len(chunk)   # few compiled shapes
      x = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], chunk.dtype)]) if pad else chunk
      pix, img = self._fn(self.params, x)
      maps.append(np.asarray(pix)[:len(chunk)])
      scores.append(np.asarray(img)[:len(chunk)])
    return np.concatenate(scores), np.concatenate(maps)


class AASource:
  """A trained AA model directory (kind "aa"): its calibrated probabilities for one object name."""

  def __init__(self, path: str, class_name: str = "", batch_size: int = 8):
    from aajax.anomaly import inference, objectives
    from aajax.anomaly.exported import load_trained
    from aajax.anomaly.prompts import prompt_ids
    self.trained = trained = load_trained(path)
    if trained.model.cfg.cross_attention and class_name and trained.class_index(class_name) is None:
      raise ConfigError(f"the cross-attention AA model {path} knows only its training classes {trained.class_names}")
    name = class_name or trained.class_names[0]
    i = trained.class_index(name)
    if i is not None:
      self.anchors = trained.anchors[i]
    else:
      ids = prompt_ids(trained.tokenizer, [name])
      self.anchors = np.asarray(objectives.anchor_table(trained.model, trained.params, ids))[0]
    self.spec = {"kind": "aa", "path": path, "class_name": name}
    self.batch_size = batch_size
    self._fn = inference.make_probability_fn(trained.model)

  def __call__(self, images):
    size, norm = self.trained.model.cfg.image_size, self.trained.norm
    scores, maps = [], []
    for i in range(0, len(images), self.batch_size):
      chunk = np.stack([preprocess(np.asarray(im), size, norm) for im in images[i:i + self.batch_size]])
      pix, img = self._fn(self.trained.params, np.repeat(self.anchors[None], len(chunk), 0), chunk)
      maps.append(np.asarray(pix))
      scores.append(np.asarray(img))
    return np.concatenate(scores), np.concatenate(maps)


def make_source(spec: dict, model=None, params=None):
  """spec {"kind": "head"} (needs the AA-Moondream model and params) or {"kind": "aa", "path", "class_name"}."""
  kind = spec.get("kind", "head")
  if kind == "head":
    return HeadSource(model, params)
  if kind == "aa":
    if not spec.get("path"):
      raise ConfigError("an 'aa' anomaly source needs the path of a trained AA model directory")
    return AASource(spec["path"], spec.get("class_name", ""))
  raise ConfigError(f"unknown anomaly source {kind!r}; expected 'head' or 'aa'")


def context_of(score: float, prob_map, threshold: float = 0.5, max_boxes: int = 3) -> tuple:
  """(score, boxes) the decoder is conditioned on."""
  return float(score), qa_lib.boxes_from_mask(np.asarray(prob_map) > threshold, max_boxes)
