"""Random-init Moondream params and their checkpoint state, shared by the parity tests."""
import functools

import numpy as np

from aajax.params import flatten, unflatten
from aajax.vlm.config import MoondreamConfig, get_config
from aajax.vlm.model import param_shapes
from weights_convert.moondream import params_to_state


def random_params(cfg: MoondreamConfig, seed: int = 0, dtype=np.float32) -> dict:
  """Every parameter random (biases, LayerNorm affine and tau included) at activation-preserving scales."""
  rng = np.random.default_rng(seed)
  flat = {}
  for path, shape in sorted(param_shapes(cfg).items()):
    name = path[-1]
    if name == "scale":
      v = 1.0 + 0.1 * rng.standard_normal(shape)
    elif name == "bias":
      v = 0.05 * rng.standard_normal(shape)
    elif name in ("coord_features", "size_features"):
      v = 3.0 * rng.standard_normal(shape)
    elif name == "alpha":
      v = rng.standard_normal(shape)
    elif name in ("wte", "pos_emb"):
      v = 0.5 * rng.standard_normal(shape)
    else:  # kernels [.., in, out], tau [qkv, heads], experts [E, in, out]
      v = rng.standard_normal(shape) * shape[-2] ** -0.5
    flat[path] = v.astype(dtype)
  return unflatten(flat)


@functools.lru_cache(maxsize=8)
def tiny_model(name: str = "tiny", seed: int = 0, **overrides):
  """(cfg, params, checkpoint state) of a named tiny config, cached across tests."""
  cfg = get_config(name)
  if overrides:
    from aajax.vlm.config import tiny
    cfg = tiny(**overrides).validate()
  params = random_params(cfg, seed)
  return cfg, params, params_to_state(params, cfg)


def tree_paths(params) -> list:
  return sorted("/".join(p) for p in flatten(params))


SPECIALS = ["<|endoftext|>"] + [f"<|md_reserved_{i}|>" for i in range(9)]
CORPUS = ["a cat sits on the mat", "two dogs run in the park", "what is in the image?", "describe the picture",
          "the quick brown fox jumps over the lazy dog", "red green blue yellow", "how many birds are there"]


def write_tiny_tokenizer(path: str, vocab_size: int = 300) -> str:
  """A byte-level BPE tokenizer.json with Moondream's special tokens at ids 0..9."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
  tok.train_from_iterator(CORPUS * 20, trainer)
  tok.save(path)
  return path
