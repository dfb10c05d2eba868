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
          HTML entities are unescaped twice first, as OpenAI's and open_clip's tokenizers do (HF's
          CLIPTokenizer does it only when ftfy is installed).

No attention mask is returned: neither family's tower was trained with one.

OpenAI's own vocabulary file (`bpe_simple_vocab_16e6.txt.gz`, what open_clip and the OpenAI `clip`
package ship) is accepted too: it is turned into the vocab.json + merges.txt it implies.
"""
import gzip
import html
import json
import os
import tempfile

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
    if self.family == "clip":
      texts = [html.unescape(html.unescape(t)) for t in texts]
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
  raise CheckpointError(f"no tokenizer in {path}: expected spiece.model (SigLIP), vocab.json + merges.txt "
                        f"or OpenAI's bpe_simple_vocab_16e6.txt.gz (CLIP)")


OPENAI_BPE_MERGES = 49152 - 256 - 2   # the merges OpenAI's tokenizer reads from its vocabulary file


def openai_bpe_file(path: str) -> str | None:
  """OpenAI's gzipped BPE file: `path` itself, or the one in a directory without vocab.json/tokenizer.json."""
  if os.path.isfile(path):
    return path if path.endswith(".gz") else None
  if not os.path.isdir(path) or {"vocab.json", "tokenizer.json"} & set(os.listdir(path)):
    return None
  found = sorted(f for f in os.listdir(path) if f.endswith(".txt.gz"))
  return os.path.join(path, found[0]) if found else None


def write_bpe_from_openai(gz_path: str, out_dir: str) -> str:
  """OpenAI CLIP's `bpe_simple_vocab_16e6.txt.gz` (a header line, then one merge per line) -> the
  vocab.json + merges.txt CLIPTokenizer reads, holding the vocabulary OpenAI's tokenizer builds: the
  256 byte symbols, the same with `</w>`, one token per merge (the first 48,894), then
  <|startoftext|> and <|endoftext|>."""
  from aajax.encoders.tiny_tokenizers import bytes_to_unicode
  try:
    with gzip.open(gz_path, "rt", encoding="utf-8") as f:
      lines = f.read().split("\n")
  except (OSError, EOFError, UnicodeDecodeError) as e:
    raise CheckpointError(f"cannot read OpenAI's BPE vocabulary {gz_path}: {e}") from None
  merges = [tuple(line.split()) for line in lines[1:OPENAI_BPE_MERGES + 1] if line.strip()]
  bad = [m for m in merges if len(m) != 2]
  if not merges or bad:
    raise CheckpointError(f"{gz_path} is not OpenAI's BPE vocabulary (a header line, then 'a b' merges): "
                          f"{'no merges' if not merges else f'line {merges.index(bad[0]) + 2} reads {bad[0]}'}")
  symbols = list(bytes_to_unicode().values())
  vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "vocab.json"), "w", encoding="utf-8") as f:
    json.dump({tok: i for i, tok in enumerate(vocab)}, f, ensure_ascii=False)
  with open(os.path.join(out_dir, "merges.txt"), "w", encoding="utf-8") as f:
    f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
  with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
    json.dump({"tokenizer_class": "CLIPTokenizer", "model_max_length": FAMILY_MAX_LEN["clip"]}, f)
  return out_dir


def load_tokenizer(path: str, family: str | None = None, max_len: int | None = None,
                   vocab_size: int | None = None) -> TextTokenizer:
  """A tokenizer from a tokenizer directory, OpenAI's BPE file, or a converted model directory (its
  `tokenizer/`).

  From a model directory, family, max_len and the vocabulary bound come from its config.
  """
  bpe = openai_bpe_file(path)
  if bpe is not None:
    if family not in (None, "clip"):
      raise ConfigError(f"{bpe} is a CLIP (BPE) vocabulary, not a {family} one")
    with tempfile.TemporaryDirectory() as tmp:   # the slow tokenizer reads its files once, at load
      return load_tokenizer(write_bpe_from_openai(bpe, tmp), "clip", max_len, vocab_size)
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
