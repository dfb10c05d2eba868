"""Tiny SigLIP and CLIP towers against transformers with the same weights."""
import dataclasses

import jax
import numpy as np
import pytest
import torch

from aajax.encoders.config import TwoTowerConfig, clip, siglip
from aajax.encoders.two_towers import TwoTowerModel
from tests.encoders.torch_models import random_hf_model
from weights_convert.common import apply_table, expected_shapes
from weights_convert.hf_towers import TRANSFORMS, split_fused, two_tower_rows

TINY = {
    "siglip": siglip(64, 2, 4, 128, 8, 32, text_len=12, vocab=99),
    "clip": clip(64, 2, 4, 8, 32, 48, 2, 4, 40, vocab=99, text_len=12),
    "clip_gelu": clip(64, 2, 4, 8, 32, 48, 2, 4, 40, act="gelu", vocab=99, text_len=12),
}


def convert(cfg: TwoTowerConfig, hf_model):
  state = {k: v.numpy() for k, v in hf_model.state_dict().items()}
  state = split_fused(state, ["vision_model.head.attention"])
  model = TwoTowerModel(cfg)
  shapes = expected_shapes(model, *example_inputs(cfg))
  return model, apply_table(state, two_tower_rows(cfg), shapes, TRANSFORMS, "hf model",
                            ignore_prefixes=("text_model.embeddings.position_ids", "vision_model.embeddings.position_ids"))


def example_inputs(cfg, batch=1):
  s = cfg.vision.image_size
  return np.zeros((batch, s, s, 3), np.float32), np.zeros((batch, cfg.text.max_len), np.int32)


def random_inputs(cfg, batch=3, seed=0, size=None):
  rng = np.random.default_rng(seed)
  s = size or cfg.vision.image_size
  images = rng.standard_normal((batch, s, s, 3)).astype(np.float32)
  ids = rng.integers(3, cfg.text.vocab_size - 3, (batch, cfg.text.max_len)).astype(np.int64)
  if cfg.family == "clip":  # an EOT (the largest id) at a different place in each row
    for i in range(batch):
      ids[i, 4 + i:] = 0
      ids[i, 3 + i] = cfg.text.vocab_size - 1
  return images, ids


@pytest.mark.parametrize("name", sorted(TINY))
def test_tiny_two_tower_matches_transformers(name):
  cfg = TINY[name]
  hf = random_hf_model(cfg)
  model, params = convert(cfg, hf)
  images, ids = random_inputs(cfg)
  with torch.no_grad():
    want = hf(input_ids=torch.from_numpy(ids), pixel_values=torch.from_numpy(images).permute(0, 3, 1, 2),
              output_hidden_states=True)
  with jax.default_matmul_precision("highest"):
    img = model.apply({"params": params}, images, taps=range(cfg.vision.depth + 1), method=TwoTowerModel.encode_image)
    txt = model.apply({"params": params}, ids.astype(np.int32), taps=range(cfg.text.depth + 1), method=TwoTowerModel.encode_text)
    out = model.apply({"params": params}, images, ids.astype(np.int32))
  close = lambda a, b: np.testing.assert_allclose(np.asarray(a), b.numpy(), rtol=1e-5, atol=2e-5)
  for k, h in enumerate(want.vision_model_output.hidden_states):
    close(img["hidden"][k], h)
  for k, h in enumerate(want.text_model_output.hidden_states):
    close(txt["hidden"][k], h)
  close(out["image_embeds"], want.image_embeds)
  close(out["text_embeds"], want.text_embeds)
  close(out["logits_per_text"], want.logits_per_text)
