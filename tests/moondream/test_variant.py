"""Moondream.from_pretrained(variant=...): a LoRA variant file merged into the decoder at load."""
import numpy as np
import pytest

from aajax.errors import CheckpointError
from aajax.model_dir import save_model
from aajax.vlm import lora_variant
from aajax.vlm.moondream import Moondream
from tests.moondream.helpers import tiny_model


def test_variant_is_merged_at_load(tmp_path):
  cfg, params, _ = tiny_model("tiny")
  save_model(str(tmp_path / "md"), "moondream", cfg.to_dict(), params)
  rng = np.random.default_rng(0)
  n = cfg.text.n_layers
  state = {}
  for i in range(n):
    for group, name in lora_variant.LAYERS:
      k = params["text"][f"blocks_{i}"][group][name]["kernel"]
      a = rng.standard_normal((2, k.shape[0])).astype(np.float32)
      b = rng.standard_normal((k.shape[1], 2)).astype(np.float32) * (name != "proj")   # proj pair zero
      state[f"text.blocks.{i}.{group}.{name}.A"], state[f"text.blocks.{i}.{group}.{name}.B"] = a, b
  path = lora_variant.save_variant(str(tmp_path / "final.pt"), state)
  md = Moondream.from_pretrained(str(tmp_path / "md"), variant=path)
  for i in range(n):
    for group, name in lora_variant.LAYERS:
      k = params["text"][f"blocks_{i}"][group][name]["kernel"]
      a, b = state[f"text.blocks.{i}.{group}.{name}.A"], state[f"text.blocks.{i}.{group}.{name}.B"]
      # x W' = x W + (x A^T) B^T for every x
      np.testing.assert_allclose(md.params["text"][f"blocks_{i}"][group][name]["kernel"], k + a.T @ b.T,
                                 rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(md.params["vision"]["patch_emb"]["kernel"], params["vision"]["patch_emb"]["kernel"])
  state["text.blocks.0.attn.proj.B"] = np.ones_like(state["text.blocks.0.attn.proj.B"])
  lora_variant.save_variant(path, state)
  with pytest.raises(CheckpointError, match="block input"):
    Moondream.from_pretrained(str(tmp_path / "md"), variant=path)
