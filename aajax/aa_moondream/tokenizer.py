"""The tokenizer of a run: the base Moondream's own, or a small one trained for random demo models.

A random-init Moondream has no tokenizer file. The demo then trains a byte-level BPE on the QA
corpus (`aajax.aa_moondream.qa.corpus`) with Moondream's special tokens at ids 0..9 (as starmie
has them), small enough for the tiny config's vocabulary. Training is deterministic and takes
milliseconds, so each stage builds it again; exported models carry it as `tokenizer.json`.
"""
import os

from aajax.errors import ConfigError
from aajax.vlm.tokenizer import MoondreamTokenizer

SPECIALS = ["<|endoftext|>"] + [f"<|md_reserved_{i}|>" for i in range(9)]
TOKENIZER_FILE = "tokenizer.json"


def demo_tokenizer(vocab_size: int, tok_cfg) -> MoondreamTokenizer:
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  from aajax.aa_moondream.qa import corpus
  alphabet = pre_tokenizers.ByteLevel.alphabet()
  if vocab_size < len(SPECIALS) + len(alphabet):
    raise ConfigError(f"a byte-level tokenizer needs a vocabulary of at least {len(SPECIALS) + len(alphabet)}, "
                      f"the model has {vocab_size}")
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, initial_alphabet=alphabet,
                                show_progress=False)
  tok.train_from_iterator(corpus() * 4, trainer)
  return MoondreamTokenizer(tok, tok_cfg)


def load_tokenizer(path: str, tok_cfg) -> MoondreamTokenizer:
  """A tokenizer.json, or the one inside a model directory."""
  return MoondreamTokenizer.from_file(path, tok_cfg)


def save_tokenizer(tokenizer: MoondreamTokenizer, path: str) -> str:
  """Write tokenizer.json atomically."""
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write(tokenizer.tok.to_str())
  os.replace(tmp, path)
  return path
