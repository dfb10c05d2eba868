"""QA items from masks: boxes, words, region bins (inverse of the decode rules), sequence layouts."""
import jax.numpy as jnp
import numpy as np
import pytest

from aajax.aa_moondream import qa
from aajax.errors import DataError
from aajax.region import coordinate_from_logits, size_from_logits
from aajax.vlm.config import RegionConfig
from tests.aa_moondream.helpers import tiny_config
from tests.aa_moondream.test_parity import FakeTokenizer


def test_boxes_from_mask_largest_first_specks_dropped():
  m = np.zeros((100, 200), np.uint8)
  m[10:20, 30:50] = 1        # 200 px
  m[60:90, 100:160] = 1      # 1800 px, largest
  m[95, 195] = 1             # a speck (under 0.2 % of 20,000 px)
  m[50, 10] = m[51, 11] = 1  # diagonal neighbours: one 8-connected region, also a speck
  assert qa.boxes_from_mask(m) == [(0.5, 0.6, 0.8, 0.9), (0.15, 0.1, 0.25, 0.2)]
  assert qa.boxes_from_mask(m, max_boxes=1) == [(0.5, 0.6, 0.8, 0.9)]
  assert qa.boxes_from_mask(np.zeros((4, 4))) == []
  tiny = np.zeros((100, 100))
  tiny[3, 3] = 1
  assert qa.boxes_from_mask(tiny) == [(0.03, 0.03, 0.04, 0.04)]   # the only region is kept


def top_left_mask(size=12):
  m = np.zeros((size, size), np.uint8)
  m[0:3, 1:3] = 1
  return m


def test_answers():
  m = top_left_mask()
  assert qa.answer_text("yesno", 1, "scratch", m) == "yes"
  assert qa.answer_text("yesno", 0, "good", None) == "no"
  assert qa.answer_text("kind", 1, "cut_paste", m) == "a misplaced patch"
  assert qa.answer_text("kind", 1, "broken_large", m) == "a broken large"   # MVTec folder names
  assert qa.answer_text("where", 1, "spot", m) == "the top left"
  assert qa.answer_text("where", 0, "good", None) == "none"
  assert qa.answer_text("explain", 1, "stain", m) == "yes, a stain at the top left."
  assert qa.answer_text("explain", 1, "stain", np.zeros((4, 4))) == "yes, a stain."   # label without a mask
  assert qa.answer_text("explain", 0, "good", None) == "no, it looks normal."


@pytest.mark.parametrize("scale", ["log", "linear"])
def test_bins_invert_the_decode_rules(scale):
  bins = qa.Bins(1024, 1024, scale)
  for c in (0.0, 0.13, 0.5, 0.999):
    b = bins.coord(c)
    assert abs(float(coordinate_from_logits(jnp.eye(1024)[b])) - c) <= 0.5 / 1024 + 1e-6
  for s in (0.01, 0.2, 0.75, 1.0):
    b = bins.size(s)
    back = float(size_from_logits(jnp.eye(1024)[b][None], scale)[0])
    tol = s * (2 ** (5 / 1023) - 1) if scale == "log" else 1 / 1024   # linear: 1.0 is past the last bin
    assert abs(back - s) <= tol + 1e-6
  assert qa.Bins.of(RegionConfig()).size_bins == 1024


def test_text_item_targets_the_answer_then_eos():
  cfg = tiny_config()
  tok = FakeTokenizer(cfg)
  seq = qa.build_item(tok, "kind", 1, "scratch", top_left_mask(), qa.Bins.of(cfg.moondream.region), context=None)
  prompt = tok.query_prompt(qa.QUESTIONS["kind"])
  answer = tok.encode("a scratch")
  assert seq.token == prompt + answer
  eos = cfg.moondream.tokenizer.eos_id
  assert seq.t_token == [qa.NO_TARGET] * (len(prompt) - 1) + answer + [eos]
  assert set(seq.t_coord) == {qa.NO_TARGET}


def test_detect_item_is_what_generate_points_reads():
  """prompt end: next token = the coordinate id and x; x: y; y: the size; size: eos (last box)."""
  cfg = tiny_config()
  tok = FakeTokenizer(cfg)
  bins = qa.Bins.of(cfg.moondream.region)
  mask = np.zeros((10, 10), np.uint8)
  mask[2:6, 1:3] = 1
  boxes = qa.boxes_from_mask(mask)
  assert boxes == [(0.1, 0.2, 0.3, 0.6)]
  seq = qa.build_item(tok, "detect", 1, "spot", mask, bins, context=(0.9, boxes))
  n_ctx = 1 + 3   # score + one box
  prompt = tok.object_prompt("detect", qa.DETECT_OBJECT)
  assert seq.kind[:n_ctx] == [qa.COORD, qa.COORD, qa.COORD, qa.SIZE]
  assert seq.value[0] == (0.9, 0.0) and seq.value[3] == pytest.approx((0.2, 0.4))
  end = n_ctx + len(prompt) - 1
  assert seq.token[n_ctx:end + 1] == prompt
  assert seq.t_token[end] == cfg.moondream.tokenizer.coord_id and seq.t_coord[end] == bins.coord(0.2)
  assert seq.kind[end + 1:] == [qa.COORD, qa.COORD, qa.SIZE]
  assert seq.t_coord[end + 1] == bins.coord(0.4)
  assert seq.t_size[end + 2] == (bins.size(0.2), bins.size(0.4))
  assert seq.t_token[end + 3] == cfg.moondream.tokenizer.eos_id
  normal = qa.build_item(tok, "detect", 0, "good", None, bins)
  assert normal.t_token[-1] == cfg.moondream.tokenizer.eos_id and len(normal) == len(prompt)


def test_padding_and_overflow():
  cfg = tiny_config()
  tok = FakeTokenizer(cfg)
  bins = qa.Bins.of(cfg.moondream.region)
  items = [qa.build_item(tok, k, 1, "spot", top_left_mask(), bins) for k in qa.QA_KINDS]
  arrays = qa.pad_sequences(items, 32)
  assert arrays["kind"].shape == (5, 32) and list(arrays["lengths"]) == [len(s) for s in items]
  assert (arrays["t_token"][0, len(items[0]):] == qa.NO_TARGET).all()
  with pytest.raises(DataError, match="max_len"):
    qa.pad_sequences(items, 4)
  with pytest.raises(DataError, match="unknown QA kind"):
    qa.build_item(tok, "poem", 1, "spot", None, bins)
  assert "yes, a stain at the top left." in qa.corpus()
