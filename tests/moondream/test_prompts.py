"""Prompt layouts of both tokenizer generations and the per-checkpoint switches."""
import pytest

from aajax.errors import InputError
from aajax.vlm.config import get_config
from aajax.vlm.tokenizer import MoondreamTokenizer


class WordIds:
  """A stand-in tokenizer: one id per character (enough to see where text goes in a prompt)."""

  def encode(self, text):
    class Enc:
      ids = [1000 + ord(c) for c in text]
    return Enc()

  def decode(self, ids):
    return "".join(chr(i - 1000) for i in ids)


def tok(name):
  return MoondreamTokenizer(WordIds(), get_config(name).tokenizer)


def test_starmie_layouts():
  t = tok("moondream2")
  assert t.caption_prompt("long") == [1, 32708, 2, 4059, 3]
  assert t.query_prompt("hi") == [1, 15381, 2, 1104, 1105, 3]
  assert t.object_prompt("detect", "cat") == [1, 7235, 476, 2, 1032, 1099, 1097, 1116, 3]  # " cat"
  assert t.object_prompt("point", "cat") == [1, 2581, 2, 1032, 1099, 1097, 1116, 3]
  assert t.query_prompt("hi", [(0.1, 0.2), (0.0, 0.0, 0.5, 0.5)])[3:8] == [5, 5, 5, 5, 6]


def test_reference_head_double_suffix_switch():
  import dataclasses
  cfg = dataclasses.replace(get_config("moondream2").tokenizer, query_double_suffix=True)
  assert MoondreamTokenizer(WordIds(), cfg).query_prompt("hi")[-2:] == [3, 3]


def test_gpt2_generation_layouts():
  old = tok("moondream2-2025-01-09")
  assert old.cfg.bos_id == old.cfg.eos_id == 50256
  assert old.query_prompt("hi") == [198, 198, 24361, 25, 1104, 1105, 198, 198, 33706, 25]
  assert old.object_prompt("detect", "cat") == [198, 198, 47504, 25, 1099, 1097, 1116, 628]  # no space
  with pytest.raises(InputError, match="caption length"):
    old.caption_prompt("long")  # long captions came with 2025-03-27
  newer = tok("moondream2-2025-04-14")
  assert newer.caption_prompt("long") == [198, 198, 14617, 8305, 25]
  assert newer.object_prompt("point", "cat")[4] == 1032  # leading space since 2025-03-27
  with pytest.raises(InputError, match="no spatial reference tokens"):
    newer.query_prompt("hi", [(0.1, 0.2)])


def test_per_checkpoint_switches():
  assert get_config("moondream05").text.n_kv_heads == 16
  assert get_config("moondream05").region.size_scale == "linear"
  assert get_config("moondream2-2025-01-09").region.size_scale == "linear"
  md3 = get_config("moondream3")
  assert (md3.text.rope_theta, md3.text.max_context, md3.text.tau, md3.region.inner_dim) == (1.5e6, 4096, True, None)
  assert md3.text.moe.num_experts == 64 and md3.text.moe.experts_per_token == 8 and md3.text.moe.start_layer == 4
