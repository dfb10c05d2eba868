"""The prefix VLM on a converted decoder (a tiny random Llama with GQA and a word-level HF tokenizer,
through weights_convert.decoder): it trains from the trainer with only the projection and the adapters,
the frozen decoder stays the converted weights and the captions use the decoder's tokenizer; the real
recipe's config uses the Llama family."""
import json
import os

import jax
import numpy as np
import pytest
from tokenizers import Tokenizer

from aajax.captioning import data as cap_data
from aajax.captioning.tasks import CaptionerTask, converted_decoder, model_configs
from aajax.errors import ConfigError, DataError
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
  write_word_tokenizer(src)
  assert convert_decoder.main(["--src", str(src), "--dst", str(dst)]) == 0
  return str(dst)


def write_word_tokenizer(folder):
  """An HF tokenizer.json (word level) over the synthetic captions' words, with <s> and </s>."""
  from tokenizers import Tokenizer, models, pre_tokenizers
  words = sorted({w for split in ("train", "test")
                  for p in cap_data.synthetic_captions(split, 0, 64, ("brick", "grass", "coffee"), 12, 0.5)
                  for w in p.caption.split()})
  vocab = {w: i for i, w in enumerate(["<unk>", "<s>", "</s>"] + words)}
  tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  tok.save(os.path.join(folder, "tokenizer.json"))
  with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
    json.dump({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}, f)


def test_trains_on_a_converted_llama_with_the_decoder_frozen(tmp_path, llama_dir):
  config = tiny_config("prefix", steps=3, log_every=1, ckpt_every=3, batch_size=8)
  config.model.decoder_dir = llama_dir
  config.eval.update(batch_size=8, max_new=4)
  config.data.update(n_per_class=4)
  task = CaptionerTask()
  frozen0, trainable0 = CaptionerTask().init(jax.random.split(jax.random.key(config.seed))[0], config)
  result = loop.train(task, config, str(tmp_path), mesh=make_mesh(jax.devices()[:1]))
  t = task.cfg.text
  tok = task.tokenizer
  assert isinstance(tok, cap_data.LMTokenizer) and (tok.bos_id, tok.eos_id, tok.pad_id) == (1, 2, 2)
  caption = task.pairs[0].caption
  assert tok.decode([tok.bos_id] + tok.encode(caption) + [tok.eos_id, 7]) == caption
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
  exported = Tokenizer.from_file(os.path.join(str(tmp_path), "model", "tokenizer.json"))
  assert exported.encode(caption, add_special_tokens=False).ids == tok.encode(caption)


def test_decoder_dir_errors(llama_dir, tmp_path):
  Tokenizer.from_file(os.path.join(llama_dir, "tokenizer.json")).save(str(tmp_path / "tokenizer.json"))
  with pytest.raises(DataError, match="no eos_token"):
    cap_data.LMTokenizer(str(tmp_path))
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
