"""Random-init Moondream params and their checkpoint state, shared by the parity tests."""
import functools

from aajax.params import flatten
from aajax.vlm.config import get_config
from aajax.vlm.random_init import random_params  # noqa: F401 - the tests' import point
from weights_convert.moondream import params_to_state


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
