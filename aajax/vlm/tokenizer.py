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

  def query_prompt(self, question: str, spatial_refs=None, reasoning: bool = False) -> list[int]:
    """prefix + one placeholder per spatial value + question + suffix (+ the thinking id when
    reasoning). A point (x, y) takes two coordinate ids, a box (x_min, y_min, x_max, y_max) two
    coordinate ids and a size id; the placeholders start right after the prefix (`spatial_offset`)."""
    if not isinstance(question, str) or not question.strip():
      raise InputError("the question is empty")
    t = self._template("query")
    if reasoning:
      if self.cfg.thinking_id is None:
        raise InputError("this model's tokenizer generation has no reasoning (thinking) token")
      suffix = list(t["suffix"]) + [self.cfg.thinking_id]
    else:
      suffix = list(t["suffix"]) * (2 if self.cfg.query_double_suffix else 1)
    return list(t["prefix"]) + self.spatial_tokens(spatial_refs or []) + self.encode(question) + suffix

  def spatial_offset(self) -> int:
    return len(self._template("query")["prefix"])

  def spatial_tokens(self, refs) -> list[int]:
    if not refs:
      return []
    if self.cfg.coord_id is None or self.cfg.size_id is None:
      raise InputError("this model's tokenizer generation has no spatial reference tokens")
    out = []
    for ref in check_spatial_refs(refs):
      out += [self.cfg.coord_id] * 2 + ([self.cfg.size_id] if len(ref) == 4 else [])
    return out


  def object_prompt(self, task: str, obj: str) -> list[int]:
    """detect / point: prefix + encode(" obj") (space since 2025-03-27) + suffix."""
    if not isinstance(obj, str) or not obj.strip():
      raise InputError(f"the object to {task} is empty")
    t = self._template(task)
    text = (" " + obj) if self.cfg.detect_leading_space else obj
    return list(t["prefix"]) + self.encode(text) + list(t["suffix"])


def check_spatial_refs(refs):
  """Points (x, y) and boxes (x_min, y_min, x_max, y_max), normalised to [0, 1]."""
  for ref in refs:
    if len(ref) not in (2, 4) or not all(isinstance(v, (int, float)) and 0 <= v <= 1 for v in ref):
      raise InputError(f"spatial reference {ref!r} is not a point (x, y) or a box (x_min, y_min, x_max, y_max) "
                       f"with values in [0, 1]")
    if len(ref) == 4 and (ref[0] > ref[2] or ref[1] > ref[3]):
      raise InputError(f"box {ref!r} has x_min > x_max or y_min > y_max")
  return refs


def spatial_values(refs):
  """Refs -> (coordinates [2 per ref], sizes [(w, h) per box]) in placeholder order."""
  coords, sizes = [], []
  for ref in refs:
    if len(ref) == 2:
      coords += [ref[0], ref[1]]
    else:
      coords += [(ref[0] + ref[2]) / 2, (ref[1] + ref[3]) / 2]
      sizes.append([ref[2] - ref[0], ref[3] - ref[1]])
  return coords, sizes
