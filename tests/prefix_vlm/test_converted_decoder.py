"""The prefix VLM on a converted decoder (a tiny random Llama with GQA, through weights_convert.decoder):
it trains from the trainer with only the projection and the adapters, and the frozen decoder stays
the converted weights; the real recipe's config uses the Llama family."""
import jax
import numpy as np
import pytest

from aajax.captioning.tasks import CaptionerTask, converted_decoder, model_configs
from aajax.errors import ConfigError
from aajax.model_dir import load_params
from aajax.params import flatten
from aajax.train import loop
from aajax.train.mesh import make_mesh
from configs.prefix_vlm import get_config
from tests.decoder import hf_models
from tests.prefix_vlm.helpers import tiny_config
from weights_convert import decoder as convert_decoder


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
  src, dst = tmp_path_factory.mktemp("hf"), tmp_path_factory.mktemp("out") / "llama"
  hf_models.save_random("llama", src)
  assert convert_decoder.main(["--src", str(src), "--dst", str(dst)]) == 0
  return str(dst)


def test_trains_on_a_converted_llama_with_the_decoder_frozen(tmp_path, llama_dir):
  config = tiny_config("prefix", steps=3, log_every=1, ckpt_every=3, batch_size=8)
  config.model.decoder_dir = llama_dir
  config.eval.update(batch_size=8, max_new=4)
  config.data.update(n_per_class=4)
  task = CaptionerTask()
  frozen0, trainable0 = CaptionerTask().init(jax.random.split(jax.random.key(config.seed))[0], config)
  result = loop.train(task, config, str(tmp_path), mesh=make_mesh(jax.devices()[:1]))
  t = task.cfg.text
  assert (t.norm, t.mlp, t.n_kv_heads, t.dim) == ("rmsnorm", "swiglu", 2, 32)
  trainable, frozen = jax.device_get(result.trainable), jax.device_get(result.frozen)
  assert set(trainable) == {"projection", "lora"} and set(frozen) == {"vision", "decoder"}
  converted = flatten(load_params(llama_dir))
  decoder = flatten(frozen["decoder"])
  assert decoder.keys() == converted.keys()
  for path, value in converted.items():
    np.testing.assert_array_equal(decoder[path], value, err_msg="/".join(path))
  before = jax.device_get(trainable0)
  moved = {k: [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(trainable[k]), jax.tree.leaves(before[k]))]
           for k in trainable}
  assert all(moved["projection"]) and any(moved["lora"])   # both trained
  assert np.isfinite(result.eval_metrics["loss"])


def test_decoder_dir_errors(llama_dir):
  config = tiny_config("xattn")
  config.model.decoder_dir = llama_dir
  with pytest.raises(ConfigError, match="decoder_dir"):
    CaptionerTask().init(jax.random.key(0), config)
  with pytest.raises(ConfigError, match=r"caption vocabulary \(1000 words\) exceeds the vocabulary"):
    converted_decoder(llama_dir, 1000)


def test_config_arguments():
  assert get_config("decoder_dir=/models/smollm").model.decoder_dir == "/models/smollm"
  with pytest.raises(ConfigError):
    get_config("decoder=/x")
  vision, text = model_configs(get_config("base").model, 1000)
  assert (text.norm, text.mlp, text.block, text.tie_embeddings, text.qkv_bias) == ("rmsnorm", "swiglu", "sequential", True, False)
  assert (text.dim, text.n_layers, text.n_heads, text.n_kv_heads, text.head_dim, text.vocab_size) == (576, 30, 9, 3, 64, 49152)
