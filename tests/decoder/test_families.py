"""Llama (GQA), Qwen2 (Q/K/V bias, tied) and GPT-2 decoders converted from HF safetensors through the
CLI equal transformers: every prompt logit, every KV-cache decode step's logits and the greedy tokens."""
import json
import os

import numpy as np
import pytest

from aajax.decoder.families import config_from_dict
from aajax.errors import ConfigError
from tests.decoder import hf_models
from tests.decoder.parity import compare
from weights_convert import decoder as convert_decoder

PROMPTS = [[3, 17, 42, 8, 91, 5, 60], [11, 2, 77, 30, 19]]


@pytest.fixture(scope="module", params=["gpt2", "llama", "qwen2"])
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


def test_sharded_source_and_llama_biases(tmp_path):
  """A sharded save (index + shards), Llama's attention_bias / mlp_bias, one KV head, tied embeddings."""
  src = tmp_path / "hf"
  model = hf_models.save_random("llama-bias", src, max_shard_size="20KB")
  assert os.path.exists(src / "model.safetensors.index.json")
  assert len([f for f in os.listdir(src) if f.endswith(".safetensors")]) > 1
  assert convert_decoder.main(["--src", str(src / "model.safetensors.index.json"), "--dst", str(tmp_path / "m")]) == 0
  t = config_from_dict(json.load(open(tmp_path / "m" / "config.json"))["config"])
  assert (t.qkv_bias, t.proj_bias, t.mlp_bias, t.tie_embeddings, t.n_kv_heads) == (True, True, True, True, 1)
  errors = compare(model, str(tmp_path / "m"), PROMPTS, n_new=4)
  print(f"llama-bias: max relative error {errors}")


def test_mistral_window_and_config_errors():
  base = dict(model_type="mistral", hidden_size=32, intermediate_size=48, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, vocab_size=96, max_position_embeddings=4096,
              sliding_window=512, hidden_act="silu")
  t = convert_decoder.text_config_from_hf(base)
  assert t.max_context == 512 and t.norm == "rmsnorm" and not t.qkv_bias   # full attention within the window
  for bad, message in [({"hidden_act": "gelu"}, "hidden_act"), ({"head_dim": 16}, "head_dim"),
                       ({"hidden_size": None}, "lacks 'hidden_size'")]:
    with pytest.raises(ConfigError, match=message):
      convert_decoder.text_config_from_hf({**base, **bad})
  with pytest.raises(ConfigError, match="activation_function"):
    convert_decoder.text_config_from_hf(dict(model_type="gpt2", n_embd=32, n_layer=1, n_head=4, vocab_size=9,
                                             n_positions=8, activation_function="relu"))


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
