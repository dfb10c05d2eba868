"""Tiny AA-Moondream configs and random params shared by the tests."""
import dataclasses
import functools

import jax
import numpy as np

from aajax.aa_moondream.config import AAMoondreamConfig
from aajax.aa_moondream.model import init_params
from aajax.params import flatten, unflatten
from aajax.vlm.config import tiny
from tests.moondream.helpers import random_params


@functools.lru_cache(maxsize=4)
def tiny_config(embed_dim: int = 16) -> AAMoondreamConfig:
  """The tiny Moondream decoder with a 4-block, 32 px vision tower (8 x 8 patches)."""
  md = tiny()
  md = md.replace(vision=dataclasses.replace(md.vision, enc_dim=32, enc_patch_size=4, enc_n_layers=4, enc_ff_dim=64,
                                             enc_n_heads=2, crop_size=32, overlap_margin=1, proj_inner_dim=48))
  return AAMoondreamConfig(md.validate(), image_adapt_until=1, levels=(1, 2, 3, 4), embed_dim=embed_dim,
                           lora_rank=4, lora_alpha=8.0, topk_fraction=0.05)


@functools.lru_cache(maxsize=4)
def tiny_params(seed: int = 0):
  """(cfg, Moondream params, head params) all random and non-trivial (level weights and anchors too)."""
  cfg = tiny_config()
  md = random_params(cfg.moondream, seed)
  head = init_params(cfg, jax.random.PRNGKey(seed + 1))
  head.pop("vision")
  rng = np.random.default_rng(seed + 2)
  head = unflatten({k: np.asarray(v) + (0.3 * rng.standard_normal(v.shape).astype(np.float32)
                                        if k[-1] == "level_weights" else 0) for k, v in flatten(head).items()})
  head["map_weight"] = np.float32(0.7)
  return cfg, md, head
