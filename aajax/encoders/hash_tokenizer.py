"""A vocabulary-free word tokenizer for randomly initialised towers (demos, tests).

Real checkpoints come with their own tokenizer (`aajax.encoders.tokenizers`). A tower trained from
random init only needs distinct, stable ids per word: each lower-cased word (punctuation split off)
maps to a stable hash in the free part of the vocabulary, laid out with the family's conventions:
  siglip: words..., EOS (=pad, id 1) up to max_len; truncation keeps EOS last ("sticky" EOS).
  clip:   SOT (vocab-2), words..., EOT (vocab-1), pad 0; truncation keeps EOT last.
"""
import re
import zlib

import numpy as np

from aajax.errors import ConfigError

_WORD = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")
FIRST_FREE_ID = 3  # ids 0..2 are pad/eos/unk in both families


class HashTokenizer:
  def __init__(self, family: str, vocab_size: int, max_len: int):
    if family not in ("siglip", "clip"):
      raise ConfigError(f"unknown tokenizer family {family!r}; expected 'siglip' or 'clip'")
    if vocab_size < 8:
      raise ConfigError(f"vocab_size {vocab_size} is too small for a hash tokenizer")
    self.family, self.vocab_size, self.max_len = family, vocab_size, max_len
    self._span = vocab_size - FIRST_FREE_ID - (2 if family == "clip" else 0)

  def word_id(self, word: str) -> int:
    return FIRST_FREE_ID + zlib.crc32(word.encode()) % self._span

  def encode(self, text: str) -> list[int]:
    ids = [self.word_id(w) for w in _WORD.findall(text.lower())]
    if self.family == "siglip":
      return ids[: self.max_len - 1] + [1]
    return [self.vocab_size - 2] + ids[: self.max_len - 2] + [self.vocab_size - 1]

  def __call__(self, texts: list[str]) -> np.ndarray:
    pad = 1 if self.family == "siglip" else 0
    out = np.full((len(texts), self.max_len), pad, np.int32)
    for i, t in enumerate(texts):
      ids = self.encode(t)
      out[i, : len(ids)] = ids
    return out
