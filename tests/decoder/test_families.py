"""Llama (GQA), Qwen2 (Q/K/V bias, tied) and GPT-2 decoders converted from HF safetensors through the
CLI equal transformers: every prompt logit, every KV-cache decode step's logits and the greedy tokens."""
import json
import os

import numpy as np
import pytest

from aajax.decoder.families import config_from_dict
from tests.decoder import hf_models
from tests.decoder.parity import compare
from weights_convert import decoder as convert_decoder

PROMPTS = [[3, 17, 42, 8, 91, 5, 60], [11, 2, 77, 30, 19]]


@pytest.fixture(scope="module", params=sorted(hf_models.TINY))
def converted(request, tmp_path_factory):
  src, dst = tmp_path_factory.mktemp("hf"), tmp_path_factory.mktemp("out") / "model"
  model = hf_models.save_random(request.param, src)
  assert convert_decoder.main(["--src", str(src), "--dst", str(dst)]) == 0
  return request.param, model, str(dst)


def test_converted_matches_transformers_with_kv_cache(converted):
  kind, model, dst = converted
  errors = compare(model, dst, PROMPTS, n_new=6)
  print(f"{kind}: max relative error {errors}")


def test_family_switches_in_the_model_dir(converted):
  kind, _, dst = converted
  with open(os.path.join(dst, "config.json")) as f:
    meta = json.load(f)
  t = config_from_dict(meta["config"])
  assert meta["kind"] == "decoder"
  want = {"llama": ("rmsnorm", "swiglu", "rope", False, False), "qwen2": ("rmsnorm", "swiglu", "rope", True, True),
          "gpt2": ("layernorm", "gelu_tanh", "learned", True, True)}[kind]
  assert (t.norm, t.mlp, t.position, t.qkv_bias, t.tie_embeddings) == want
  assert t.block == "sequential" and t.n_kv_heads == (4 if kind == "gpt2" else 2)


@pytest.mark.full
@pytest.mark.parametrize("kind", sorted(hf_models.FULL))
def test_real_size_matches_transformers(kind, tmp_path):
  src, dst = tmp_path / "hf", tmp_path / "model"
  model = hf_models.save_random(kind, src, spread=0.02)
  assert convert_decoder.main(["--src", str(src), "--dst", str(dst)]) == 0
  rng = np.random.default_rng(0)
  vocab = model.config.vocab_size
  prompts = [rng.integers(0, vocab, 12).tolist(), rng.integers(0, vocab, 9).tolist()]
  errors = compare(model, str(dst), prompts, n_new=4)
  print(f"{kind}: max relative error {errors}")
