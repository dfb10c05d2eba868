"""Compiled pieces of a Moondream config, and image encoding into a reusable KV-cache prefix.

`MoondreamFns(cfg)` holds no params: every function takes them, so one instance serves any number
of params trees (a server, a LoRA-merged copy). Pieces, each jitted on its own:
  encode_crops(vision_params, crops)          ViT over all crops of a batch of images
  pool_local(tokens, tiling)                  stitching + adaptive pooling (per tiling)
  project(vision_params, global, pooled)      projection into the decoder width
  steps.prefill / steps.decode / decode_tokens (aajax.decoder.steps)
  read_coord / read_size (+ steps.decode)     region decode -> re-encode, then one decoder step

`encode_image(fns, params, images)` runs the vision tower and the BOS + image prefill and returns an
`EncodedImage` (the cache of the 730 prefix positions), which any number of prompts can reuse.
"""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from aajax.decoder import kv_cache as kvc
from aajax.decoder.steps import DecoderSteps
from aajax.errors import InputError
from aajax.region import RegionModel, coordinate_from_logits, size_from_logits
from aajax.vlm import crops as C
from aajax.vlm.config import MoondreamConfig
from aajax.vlm.model import MoondreamModules
from aajax.vlm.vision import VisionEncoder


@dataclasses.dataclass
class EncodedImage:
  """The decoder's KV cache after BOS + image tokens, one row per image (length = prefix_len)."""
  cache: dict

  @property
  def batch(self) -> int:
    return kvc.cache_batch(self.cache)

  def rows(self, index) -> "EncodedImage":
    """A new EncodedImage of the given rows (repeats allowed: several prompts per image)."""
    index = jnp.asarray(index, jnp.int32)
    return EncodedImage(jax.tree.map(lambda a: a[index], self.cache))


class MoondreamFns:
  def __init__(self, cfg: MoondreamConfig):
    self.cfg = cfg.validate()
    self.modules = MoondreamModules(cfg)
    self.steps = DecoderSteps(cfg.text)
    vision, region = self.modules.vision, self.modules.region
    self.encode_crops = jax.jit(lambda p, x: vision.apply({"params": p}, x, method=VisionEncoder.encode))
    self.project = jax.jit(lambda p, g, l: vision.apply({"params": p}, g, l, method=VisionEncoder.project))
    self._region = region
    self.read_coord = jax.jit(self._read_coord)
    self.encode_values = jax.jit(self._encode_values)
    self.reasoning_inputs = jax.jit(self._reasoning_inputs)
    self.read_size = jax.jit(self._read_size)

  @functools.lru_cache(maxsize=64)
  def pool_local(self, tiling: tuple[int, int]):
    """Jitted [th*tw, grid**2, D] local tokens -> pooled [grid**2, D] for one tiling."""
    v = self.cfg.vision

    def pool(local):
      grid = C.reconstruct_from_crops(local.reshape(-1, v.grid, v.grid, local.shape[-1]), tiling, v.overlap_margin)
      return C.adaptive_avg_pool(grid, v.grid).reshape(v.n_tokens, -1)
    return jax.jit(pool)

  def region(self, params, method, *args):
    return self._region.apply({"params": params["region"]}, *args, method=getattr(RegionModel, method))

  def _encode_values(self, params, coords, sizes):
    """coords [n, 1], sizes [m, 2] -> their embeddings (spatial references in prompts)."""
    return self.region(params, "encode_coordinate", coords), self.region(params, "encode_size", sizes)

  def _read_coord(self, params, hidden):
    """Raw hidden [B, dim] -> (coordinate [B], its embedding [B, dim] to feed back)."""
    coord = coordinate_from_logits(self.region(params, "decode_coordinate", hidden))
    return coord, self.region(params, "encode_coordinate", coord[:, None])

  def _reasoning_inputs(self, params, tokens, hidden):
    """Next decoder inputs while reasoning: the token embedding, except that a coordinate id is
    replaced by the encoding of the coordinate read from `hidden`. -> (coordinates [B], [B, dim])."""
    coord, coord_emb = self._read_coord(params, hidden)
    tok_emb = self.steps._embed(params["text"], tokens)
    is_coord = (tokens == self.cfg.tokenizer.coord_id)[:, None]
    return coord, jnp.where(is_coord, coord_emb.astype(tok_emb.dtype), tok_emb)

  def _read_size(self, params, hidden):
    """Raw hidden [B, dim] -> ((w, h) [B, 2], its embedding [B, dim])."""
    size = size_from_logits(self.region(params, "decode_size", hidden), self.cfg.region.size_scale)
    return size, self.region(params, "encode_size", size)

  def coord_step(self, params, hidden, cache, active):
    """Read a coordinate from `hidden` and feed its encoding: (coord [B], decoder step output)."""
    coord, emb = self.read_coord(params, hidden)
    return coord, self.steps.decode(params["text"], emb, cache, active)

  def size_step(self, params, hidden, cache, active):
    size, emb = self.read_size(params, hidden)
    return size, self.steps.decode(params["text"], emb, cache, active)


def prepare_images(images, cfg: MoondreamConfig, mimic_bf16: bool = False):
  """Images (PIL / arrays) -> (normalised crops of all images, [n_crops], [tiling])."""
  crops, counts, tilings = [], [], []
  for image in images:
    c, tiling = C.overlap_crop_image(C.to_rgb(image), cfg.vision)
    crops.append(C.normalize(c, mimic_bf16))
    counts.append(len(c))
    tilings.append(tiling)
  return np.concatenate(crops), counts, tilings


def image_embeddings(fns: MoondreamFns, params, images, crop_bucket: int = 4):
  """A list of images -> image tokens [B, grid**2, dim] (global crop first in each concat)."""
  crops, counts, tilings = prepare_images(images, fns.cfg)
  pad = -len(crops) % crop_bucket  # fewer distinct shapes to compile
  crops = np.concatenate([crops, np.zeros((pad,) + crops.shape[1:], crops.dtype)]) if pad else crops
  tokens = fns.encode_crops(params["vision"], crops)
  starts = np.cumsum([0] + counts)
  globals_, pooled = [], []
  for s, n, tiling in zip(starts, counts, tilings):
    globals_.append(tokens[s])
    pooled.append(fns.pool_local(tiling)(tokens[s + 1:s + n]))
  return fns.project(params["vision"], jnp.stack(globals_), jnp.stack(pooled))


def encode_image(fns: MoondreamFns, params, images) -> EncodedImage:
  """Vision tower + BOS/image prefill (bidirectional prefix) -> the reusable prefix cache."""
  if not isinstance(images, (list, tuple)):
    images = [images]
  if not images:
    raise InputError("no images given")
  cfg = fns.cfg
  emb = image_embeddings(fns, params, images)
  bos = fns.steps.embed(params["text"], jnp.full((len(images), 1), cfg.tokenizer.bos_id, jnp.int32))
  x = jnp.concatenate([bos, emb.astype(bos.dtype)], axis=1)
  cache = kvc.init_cache(cfg.text.n_layers, len(images), cfg.prefix_len, cfg.text.n_kv_heads, cfg.text.head_dim,
                         jnp.dtype(cfg.text.dtype))
  out = fns.steps.prefill(params["text"], x, cache, prefix_len=cfg.prefix_len)
  return EncodedImage(out["cache"])
