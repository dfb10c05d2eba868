"""Tokenizer loading (a local `tokenizer.json`) and the prompt layouts of both generations.

Special ids and templates come from `TokenizerConfig`, never from the tokenizer file (as in the
reference); the file only turns text into ids and back. The older generation is GPT-2 BPE (bos = eos
= 50256, templates of "\\n\\nQuestion:" style ids); the newer "starmie" one has bos = eos = 0 and
reserved ids 1..9 for the template structure, answer, coordinates and sizes.
"""
import os

from aajax.errors import CheckpointError, InputError
from aajax.vlm.config import TokenizerConfig


class MoondreamTokenizer:
  def __init__(self, tokenizer, cfg: TokenizerConfig):
    self.tok, self.cfg = tokenizer, cfg

  @classmethod
  def from_file(cls, path: str, cfg: TokenizerConfig) -> "MoondreamTokenizer":
    from tokenizers import Tokenizer
    if os.path.isdir(path):
      path = os.path.join(path, "tokenizer.json")
    if not os.path.exists(path):
      raise CheckpointError(f"tokenizer not found: {path} (copy the model's tokenizer.json there, "
                            f"or pass --tokenizer to the converter)")
    try:
      return cls(Tokenizer.from_file(path), cfg)
    except Exception as e:  # the tokenizers library raises a bare Exception on bad JSON
      raise CheckpointError(f"cannot read tokenizer {path}: {str(e).splitlines()[0]}") from None

  def encode(self, text: str) -> list[int]:
    return list(self.tok.encode(text).ids)

  def decode(self, ids) -> str:
    return self.tok.decode(list(map(int, ids)))

  # -- prompt layouts ---------------------------------------------------------------------------
  def _template(self, task: str):
    t = self.cfg.templates.get(task)
    if t is None:
      raise InputError(f"this model has no {task!r} prompt template")
    return t

  def caption_prompt(self, length: str) -> list[int]:
    t = self._template("caption")
    if length not in t:
      raise InputError(f"unknown caption length {length!r}; this model has {sorted(t)}")
    return list(t[length])

  def query_prompt(self, question: str) -> list[int]:
    if not isinstance(question, str) or not question.strip():
      raise InputError("the question is empty")
    t = self._template("query")
    suffix = list(t["suffix"]) * (2 if self.cfg.query_double_suffix else 1)
    return list(t["prefix"]) + self.encode(question) + suffix

  def object_prompt(self, task: str, obj: str) -> list[int]:
    """detect / point: prefix + encode(" obj") (space since 2025-03-27) + suffix."""
    if not isinstance(obj, str) or not obj.strip():
      raise InputError(f"the object to {task} is empty")
    t = self._template(task)
    text = (" " + obj) if self.cfg.detect_leading_space else obj
    return list(t["prefix"]) + self.encode(text) + list(t["suffix"])
