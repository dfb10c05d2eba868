"""Anomaly question answering built from masks, in Moondream's prompt templates (host side, numpy).

Every labelled image gives five items; the answers come from its mask and defect type, in the
words the synthetic caption set uses (`aajax.captioning.data`: defect phrases, mask position on a
3 x 3 grid):
  yesno    query "Is there a defect in this image?"      -> "yes" / "no"
  kind     query "What kind of defect is it?"            -> "a scratch", "a stain", ... / "none"
  where    query "Where is the defect?"                  -> "the top left", "the center", ... / "none"
  explain  query "Is anything wrong here? Explain."      -> "yes, a scratch at the top left." /
                                                            "no, it looks normal."
  detect   detect " defect"                              -> one box per defect region, read through
                                                            the region heads, then eos
Boxes are the bounding boxes of the mask's 8-connected regions (largest first, at most
`max_boxes`, specks under `min_area` of the image dropped), normalised to [0, 1].

Items are sequences of elements: a token id, a coordinate (fed through the region coordinate
encoder) or a size (w, h) (through the size encoder), each with the targets the hidden state at
that position must predict: the next token, a coordinate bin, size bins. A detect answer is what
`aajax.vlm.generate.generate_points` reads back: at the prompt's end the next token must not be eos
(target: the coordinate id) and x is read from the same hidden; y from the x position; the size
from the y position; after the size the next token is eos or the coordinate id of another box.

An optional anomaly context goes first (before the template): the image score as a coordinate,
then each predicted box as coordinate x, coordinate y, size. The decoder conditioned on it is what
`explain` runs.
"""
import dataclasses

import numpy as np

from aajax.captioning.data import DEFECT_PHRASES, position_phrase
from aajax.errors import DataError

QA_KINDS = ("yesno", "kind", "where", "explain", "detect")
QUESTIONS = {
    "yesno": "Is there a defect in this image?",
    "kind": "What kind of defect is it?",
    "where": "Where is the defect?",
    "explain": "Is anything wrong here? Explain.",
}
DETECT_OBJECT = "defect"
OPEN_QUESTION = "Describe any defect or damage you see in this image."

TOKEN, COORD, SIZE = 0, 1, 2
NO_TARGET = -1


def defect_phrase(defect_type: str) -> str:
  """"a scratch" for the synthetic types; other data sets' folder names spelled out ("a broken large")."""
  return DEFECT_PHRASES.get(defect_type) or "a " + (defect_type.replace("_", " ").strip() or "defect")


def boxes_from_mask(mask, max_boxes: int = 3, min_area: float = 0.002) -> list[tuple]:
  """[(x_min, y_min, x_max, y_max)] in [0, 1] of the 8-connected regions of a boolean mask."""
  from scipy import ndimage
  mask = np.asarray(mask) > 0
  if not mask.any():
    return []
  h, w = mask.shape
  labels, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
  areas = ndimage.sum_labels(mask, labels, index=np.arange(1, n + 1))
  order = np.argsort(-areas, kind="stable")
  slices = ndimage.find_objects(labels)
  boxes = []
  for k in order:
    if boxes and areas[k] < min_area * h * w:
      break   # the largest region is kept whatever its size
    ys, xs = slices[k]
    boxes.append((xs.start / w, ys.start / h, xs.stop / w, ys.stop / h))
    if len(boxes) == max_boxes:
      break
  return boxes


def answer_text(kind: str, label: int, defect_type: str, mask) -> str:
  if kind == "yesno":
    return "yes" if label else "no"
  if not label:
    return {"kind": "none", "where": "none", "explain": "no, it looks normal."}[kind]
  phrase = defect_phrase(defect_type)
  place = position_phrase(np.asarray(mask)) if mask is not None and np.asarray(mask).any() else None
  if kind == "kind":
    return phrase
  if kind == "where":
    return place or "unknown"
  return f"yes, {phrase} at {place}." if place else f"yes, {phrase}."


def corpus() -> list[str]:
  """Every string the QA items are made of (for the demo tokenizer)."""
  places = ["the center"] + [f"the {r} {c}" for r in ("top", "middle", "bottom") for c in ("left", "center", "right")]
  phrases = sorted(set(DEFECT_PHRASES.values()))
  texts = list(QUESTIONS.values()) + [OPEN_QUESTION, " " + DETECT_OBJECT, "yes", "no", "none", "unknown",
                                      "no, it looks normal."]
  texts += phrases + places + [f"yes, {p} at {w}." for p in phrases for w in places]
  return texts


# --------------------------------------------------------------------------------------- sequences

@dataclasses.dataclass
class Sequence:
  """Elements and, per position, what its hidden state must predict."""
  kind: list = dataclasses.field(default_factory=list)       # TOKEN | COORD | SIZE
  token: list = dataclasses.field(default_factory=list)
  value: list = dataclasses.field(default_factory=list)      # (coord, 0) or (w, h)
  t_token: list = dataclasses.field(default_factory=list)
  t_coord: list = dataclasses.field(default_factory=list)    # a coordinate bin
  t_size: list = dataclasses.field(default_factory=list)     # (w bin, h bin)

  def add(self, kind, token=0, value=(0.0, 0.0)):
    self.kind.append(kind)
    self.token.append(int(token))
    self.value.append(tuple(float(v) for v in value))
    self.t_token.append(NO_TARGET)
    self.t_coord.append(NO_TARGET)
    self.t_size.append((NO_TARGET, NO_TARGET))

  def tokens(self, ids):
    for t in ids:
      self.add(TOKEN, t)

  def __len__(self):
    return len(self.kind)


@dataclasses.dataclass(frozen=True)
class Bins:
  """Training bins of the region heads: the inverse of the decode rules in `aajax.region`."""
  coord_bins: int
  size_bins: int
  size_scale: str   # "log" | "linear"

  @classmethod
  def of(cls, region_cfg) -> "Bins":
    return cls(region_cfg.coord_out_dim, region_cfg.size_out_dim // 2, region_cfg.size_scale)

  def coord(self, c: float) -> int:
    return int(np.clip(round(c * self.coord_bins), 0, self.coord_bins - 1))

  def size(self, s: float) -> int:
    n = self.size_bins
    if self.size_scale == "log":
      b = (np.log2(np.clip(s, 2.0 ** -10, 1.0)) + 10.0) * (n - 1) / 10.0
    else:
      b = s * n
    return int(np.clip(round(b), 0, n - 1))


def box_elements(box):
  """A box as Moondream feeds it: centre x, centre y, size (w, h)."""
  x0, y0, x1, y1 = box
  return ((x0 + x1) / 2, (y0 + y1) / 2, (max(x1 - x0, 0.0), max(y1 - y0, 0.0)))


def add_context(seq: Sequence, score: float, boxes) -> None:
  seq.add(COORD, value=(float(np.clip(score, 0.0, 1.0)), 0.0))
  for box in boxes:
    cx, cy, wh = box_elements(box)
    seq.add(COORD, value=(cx, 0.0))
    seq.add(COORD, value=(cy, 0.0))
    seq.add(SIZE, value=wh)


def text_item(tok, kind: str, answer: str, context=None) -> Sequence:
  """A query item: [context] prefix question suffix answer; targets on the answer and its eos."""
  seq = Sequence()
  if context is not None:
    add_context(seq, *context)
  seq.tokens(tok.query_prompt(QUESTIONS[kind]))
  answer_ids = tok.encode(answer)
  if not answer_ids:
    raise DataError(f"the tokenizer encodes the answer {answer!r} to nothing")
  targets = answer_ids + [tok.cfg.eos_id]
  seq.t_token[-1] = targets[0]
  for t, nxt in zip(answer_ids, targets[1:]):
    seq.add(TOKEN, t)
    seq.t_token[-1] = nxt
  return seq


def continue_id(tok_cfg) -> int:
  """The non-eos token a detect answer predicts before each box (the coordinate id when defined)."""
  return tok_cfg.coord_id if tok_cfg.coord_id is not None else tok_cfg.eos_id + 1


def detect_item(tok, boxes, bins: Bins, context=None) -> Sequence:
  seq = Sequence()
  if context is not None:
    add_context(seq, *context)
  seq.tokens(tok.object_prompt("detect", DETECT_OBJECT))
  more = continue_id(tok.cfg)
  seq.t_token[-1] = more if boxes else tok.cfg.eos_id
  for i, box in enumerate(boxes):
    cx, cy, (w, h) = box_elements(box)
    seq.t_coord[-1] = bins.coord(cx)
    seq.add(COORD, value=(cx, 0.0))
    seq.t_coord[-1] = bins.coord(cy)
    seq.add(COORD, value=(cy, 0.0))
    seq.t_size[-1] = (bins.size(w), bins.size(h))
    seq.add(SIZE, value=(w, h))
    seq.t_token[-1] = more if i + 1 < len(boxes) else tok.cfg.eos_id
  return seq


def build_item(tok, kind: str, label: int, defect_type: str, mask, bins: Bins, context=None,
               max_boxes: int = 3) -> Sequence:
  """The item of one labelled image (mask: its {0, 1} mask, or None for a normal image)."""
  if kind == "detect":
    return detect_item(tok, boxes_from_mask(mask, max_boxes) if mask is not None else [], bins, context)
  if kind not in QUESTIONS:
    raise DataError(f"unknown QA kind {kind!r}; expected one of {QA_KINDS}")
  return text_item(tok, kind, answer_text(kind, label, defect_type, mask), context)


def pad_sequences(items: list, length: int) -> dict:
  """Sequences -> right-padded arrays {kind, token, value, t_token, t_coord, t_size, lengths}."""
  longest = max(len(s) for s in items)
  if longest > length:
    raise DataError(f"a QA sequence has {longest} elements; raise qa.max_len above {length}")
  b = len(items)
  out = {"kind": np.zeros((b, length), np.int32), "token": np.zeros((b, length), np.int32),
         "value": np.zeros((b, length, 2), np.float32), "t_token": np.full((b, length), NO_TARGET, np.int32),
         "t_coord": np.full((b, length), NO_TARGET, np.int32),
         "t_size": np.full((b, length, 2), NO_TARGET, np.int32), "lengths": np.zeros((b,), np.int32)}
  for i, s in enumerate(items):
    n = len(s)
    out["kind"][i, :n], out["token"][i, :n] = s.kind, s.token
    out["value"][i, :n] = s.value
    out["t_token"][i, :n], out["t_coord"][i, :n] = s.t_token, s.t_coord
    out["t_size"][i, :n] = s.t_size
    out["lengths"][i] = n
  return out
