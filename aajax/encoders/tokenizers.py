"""Text tokenizers of both families, loaded from a local directory, with each family's conventions.

The vocabularies are the transformers tokenizers the checkpoints ship with (`SiglipTokenizer`,
SentencePiece `spiece.model`; `CLIPTokenizer`, byte-level BPE `vocab.json` + `merges.txt` or
`tokenizer.json`). What this module owns is how a batch becomes the `[B, max_len]` int32 array the
towers were trained on:

  siglip  canonicalised text (lower case, punctuation dropped: done by SiglipTokenizer), tokens, EOS;
          padded with EOS (= pad, id 1) to exactly max_len (64; 16 for so400m-224). The tower pools
          the last position, so padding to max_len is not optional. Too long: cut to max_len - 1
          tokens and EOS appended ("sticky" EOS, as big_vision).
  clip    SOT, tokens, EOT; padded to max_len (77) with EOT (HF's pad; open_clip pads 0 — the
          tower pools the first EOT, so both give the same embedding). Too long: EOT kept last.

No attention mask is returned: neither family's tower was trained with one.
"""
import json
import os

import numpy as np

from aajax.errors import CheckpointError, ConfigError, InputError

FAMILY_MAX_LEN = {"siglip": 64, "clip": 77}


class TextTokenizer:
  """texts -> int32 [B, max_len] token ids for a two-tower text tower."""

  def __init__(self, hf_tokenizer, family: str, max_len: int):
    if family not in FAMILY_MAX_LEN:
      raise ConfigError(f"unknown tokenizer family {family!r}; expected 'siglip' or 'clip'")
    self.hf, self.family, self.max_len = hf_tokenizer, family, max_len
    if hf_tokenizer.eos_token_id is None or hf_tokenizer.pad_token_id is None:
      raise CheckpointError(f"the {family} tokenizer defines no EOS/pad token")

  @property
  def vocab_size(self) -> int:
    return len(self.hf)

  @property
  def eos_id(self) -> int:
    return self.hf.eos_token_id

  def __call__(self, texts) -> np.ndarray:
    if isinstance(texts, str):
      texts = [texts]
    if not texts or not all(isinstance(t, str) for t in texts):
      raise InputError("tokenizer input must be a non-empty list of strings")
    out = self.hf(list(texts), padding="max_length", max_length=self.max_len, truncation=True,
                  return_attention_mask=False)["input_ids"]
    return np.asarray(out, np.int32)


def _hf_class(family: str):
  import transformers
  return transformers.SiglipTokenizer if family == "siglip" else transformers.CLIPTokenizer


def family_of_tokenizer_dir(path: str) -> str:
  files = set(os.listdir(path))
  if "spiece.model" in files:
    return "siglip"
  if {"vocab.json", "merges.txt"} <= files or "tokenizer.json" in files:
    return "clip"
  raise CheckpointError(f"no tokenizer in {path}: expected spiece.model (SigLIP) or vocab.json + merges.txt "
                        f"(CLIP)")


def load_tokenizer(path: str, family: str | None = None, max_len: int | None = None,
                   vocab_size: int | None = None) -> TextTokenizer:
  """A tokenizer from a tokenizer directory, or from a converted model directory (its `tokenizer/`).

  From a model directory, family, max_len and the vocabulary bound come from its config.
  """
  if not os.path.isdir(path):
    raise CheckpointError(f"tokenizer directory not found: {path}")
  config_path = os.path.join(path, "config.json")
  if os.path.isdir(os.path.join(path, "tokenizer")) or _is_model_dir(config_path):
    from aajax.model_dir import read_model_config
    kind, cfg = read_model_config(path)
    text = (cfg.get("backbone", cfg) if kind == "aa" else cfg)["text"]
    family, max_len, vocab_size = family or text["family"], max_len or text["max_len"], vocab_size or text["vocab_size"]
    path = os.path.join(path, "tokenizer")
    if not os.path.isdir(path):
      raise CheckpointError(f"{os.path.dirname(path)} carries no tokenizer; convert again with --tokenizer DIR")
  family = family or family_of_tokenizer_dir(path)
  max_len = max_len or FAMILY_MAX_LEN.get(family)
  try:
    hf = _hf_class(family).from_pretrained(path, local_files_only=True)
  except (OSError, ValueError, TypeError) as e:
    raise CheckpointError(f"cannot load the {family} tokenizer from {path}: {str(e).splitlines()[0]}") from None
  tok = TextTokenizer(hf, family, max_len)
  if vocab_size is not None and tok.vocab_size > vocab_size:
    raise CheckpointError(f"tokenizer in {path} has {tok.vocab_size} tokens but the text tower embeds only "
                          f"{vocab_size}: wrong tokenizer for this model")
  return tok


def _is_model_dir(config_path: str) -> bool:
  if not os.path.exists(config_path):
    return False
  try:
    with open(config_path) as f:
      return "kind" in json.load(f)
  except (OSError, json.JSONDecodeError):
    return False
