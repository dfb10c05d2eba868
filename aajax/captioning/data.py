"""Image-caption pairs: readers, the synthetic caption set, tokenisation with loss masks, batches.

Sources:
  * `synthetic_captions`: the synthetic defect set, each image captioned from its metadata
    ("brick wall with a scratch at the top left", "grass texture without defects"): class name,
    defect kind and the position of the defect's mask centre on a 3 x 3 grid. No download.
  * `read_pairs(root, index)`: images under a folder plus a JSONL ({"image": rel path, "caption"})
    or CSV (columns image, caption) index.

A batch holds `images` [B, H, W, 3] float32 (normalised), `tokens` [B, L] int32 = BOS caption EOS
PAD..., and `loss_mask` [B, L] float32, 1 where the token is a prediction target (caption words and
EOS; BOS and padding are never targets).
"""
import csv
import dataclasses
import json
import os

import numpy as np

from aajax.data.sample import read_image
from aajax.data.transforms import preprocess
from aajax.errors import DataError

DEFECT_PHRASES = {"scratch": "a scratch", "spot": "a spot", "cut_paste": "a misplaced patch",
                  "stain": "a stain", "deform": "a deformation"}
ROWS, COLS = ("top", "middle", "bottom"), ("left", "center", "right")


@dataclasses.dataclass(frozen=True, eq=False)
class CaptionPair:
  image: "str | np.ndarray"   # file path or uint8 RGB array
  caption: str

  def load_image(self) -> np.ndarray:
    return self.image if isinstance(self.image, np.ndarray) else read_image(self.image)


def position_phrase(mask: np.ndarray) -> str:
  """Where the mask's centre lies on a 3 x 3 grid: "the top left", ..., "the center"."""
  ys, xs = np.nonzero(mask)
  h, w = mask.shape
  row, col = ROWS[min(2, int(3 * ys.mean() / h))], COLS[min(2, int(3 * xs.mean() / w))]
  return "the center" if (row, col) == ("middle", "center") else f"the {row} {col}"


def caption_for(sample, real_name: str) -> str:
  if not sample.label:
    return f"{real_name} without defects"
  return f"{real_name} with {DEFECT_PHRASES[sample.defect_type]} at {position_phrase(sample.mask)}"


def synthetic_captions(split: str, seed: int = 0, image_size: int = 64, classes=None, n_per_class: int = 32,
                       anomaly_fraction: float = 0.5) -> list:
  from aajax.data.synthetic import make_synthetic
  data = make_synthetic(seed, max(image_size, 32), classes, n_per_class, n_per_class, anomaly_fraction)
  return [CaptionPair(s.image, caption_for(s, data.real_names[s.class_name])) for s in data.split(split)]


def read_pairs(root: str, index: str) -> list:
  """Pairs from a JSONL or CSV index; image paths are relative to `root` (or absolute)."""
  path = index if os.path.isabs(index) else os.path.join(root, index)
  if not os.path.isfile(path):
    raise DataError(f"caption index not found: {path}")
  rows = []
  with open(path, newline="") as f:
    if path.endswith(".csv"):
      rows = list(csv.DictReader(f))
    else:
      for n, line in enumerate(f, 1):
        if line.strip():
          try:
            rows.append(json.loads(line))
          except json.JSONDecodeError as e:
            raise DataError(f"{path}:{n}: not JSON ({e.msg})") from None
  pairs = []
  for n, row in enumerate(rows, 1):
    if not isinstance(row, dict) or not row.get("image") or not isinstance(row.get("caption"), str):
      raise DataError(f"{path}: record {n} needs 'image' and 'caption' fields, got {row!r}")
    image = row["image"] if os.path.isabs(row["image"]) else os.path.join(root, row["image"])
    if not os.path.isfile(image):
      raise DataError(f"{path}: record {n}: image not found: {image}")
    pairs.append(CaptionPair(image, row["caption"]))
  if not pairs:
    raise DataError(f"caption index {path} has no records")
  return pairs


class WordTokenizer:
  """Lower-cased whitespace words over a fixed vocabulary; ids 0..3 are <pad> <bos> <eos> <unk>."""
  SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")
  pad_id, bos_id, eos_id, unk_id = 0, 1, 2, 3

  def __init__(self, words):
    self.vocab = list(self.SPECIALS) + [w for w in words if w not in self.SPECIALS]
    self.ids = {w: i for i, w in enumerate(self.vocab)}

  @classmethod
  def from_captions(cls, captions) -> "WordTokenizer":
    return cls(sorted({w for c in captions for w in c.lower().split()}))

  def __len__(self):
    return len(self.vocab)

  def encode(self, text: str) -> list:
    return [self.ids.get(w, self.unk_id) for w in text.lower().split()]

  def decode(self, ids) -> str:
    words = []
    for i in ids:
      i = int(i)
      if i == self.eos_id:
        break
      if i not in (self.pad_id, self.bos_id):
        words.append(self.vocab[i] if 0 <= i < len(self.vocab) else "<unk>")
    return " ".join(words)

  def to_json(self) -> dict:
    return {"kind": "words", "vocab": self.vocab}


class LMTokenizer:
  """A decoder's own HF tokenizer: `tokenizer.json` plus the special tokens of `tokenizer_config.json`
  (or `special_tokens_map.json`) in a converted decoder directory. Captions are encoded without the
  tokenizer's own specials (the caption layout adds BOS and EOS); without a BOS token (Qwen2) EOS
  starts the caption, without a pad token EOS pads (padding is masked out of the loss)."""

  def __init__(self, folder: str):
    from tokenizers import Tokenizer
    path = os.path.join(folder, "tokenizer.json")
    try:
      self.tok = Tokenizer.from_file(path)
    except Exception as e:  # the tokenizers library raises bare Exceptions for bad files
      raise DataError(f"cannot read tokenizer {path}: {str(e).splitlines()[0]}") from None
    special = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
      if os.path.exists(os.path.join(folder, name)):
        with open(os.path.join(folder, name)) as f:
          special.update({k: v for k, v in json.load(f).items() if k.endswith("_token") and v})
    ids = {k: self._id(v) for k, v in special.items()}
    if ids.get("eos_token") is None:
      raise DataError(f"the tokenizer in {folder} names no eos_token in tokenizer_config.json that it knows")
    self.eos_id = ids["eos_token"]
    self.bos_id = ids.get("bos_token") if ids.get("bos_token") is not None else self.eos_id
    self.pad_id = ids.get("pad_token") if ids.get("pad_token") is not None else self.eos_id

  def _id(self, token):
    token = token.get("content") if isinstance(token, dict) else token
    return self.tok.token_to_id(token) if isinstance(token, str) else None

  def __len__(self):
    return self.tok.get_vocab_size(with_added_tokens=True)

  def encode(self, text: str) -> list:
    return self.tok.encode(text, add_special_tokens=False).ids

  def decode(self, ids) -> str:
    out = []
    for i in map(int, ids):
      if i == self.eos_id:
        break
      if i not in (self.pad_id, self.bos_id):
        out.append(i)
    return self.tok.decode(out).strip()

  def to_json(self) -> dict:
    return json.loads(self.tok.to_str())


def encode_captions(tokenizer, captions, max_len: int) -> tuple:
  """(tokens [N, max_len] int32 = BOS words EOS PAD..., loss_mask [N, max_len] float32).

  Captions longer than max_len - 2 words are cut (and still end with EOS)."""
  if max_len < 3:
    raise DataError(f"max_len must leave room for BOS, a word and EOS, got {max_len}")
  tokens = np.full((len(captions), max_len), tokenizer.pad_id, np.int32)
  mask = np.zeros((len(captions), max_len), np.float32)
  for i, caption in enumerate(captions):
    ids = [tokenizer.bos_id] + tokenizer.encode(caption)[:max_len - 2] + [tokenizer.eos_id]
    tokens[i, :len(ids)] = ids
    mask[i, 1:len(ids)] = 1.0
  return tokens, mask


class CaptionBatches:
  """Shuffled epochs of caption batches; the trainer's data iterator (state: epoch and position)."""

  def __init__(self, pairs, tokenizer, batch_size: int, image_size: int, max_len: int, norm: str = "siglip",
               seed: int = 0, shuffle: bool = True, start_state: dict | None = None):
    if len(pairs) < batch_size:
      raise DataError(f"{len(pairs)} caption pairs cannot fill a batch of {batch_size}")
    self.pairs, self.batch_size, self.image_size, self.norm = pairs, batch_size, image_size, norm
    self.seed, self.shuffle = seed, shuffle
    self.tokens, self.loss_mask = encode_captions(tokenizer, [p.caption for p in pairs], max_len)
    self._images = {}
    self.epoch, self.position = 0, 0
    if start_state:
      self.set_state(start_state)

  def _order(self):
    n = len(self.pairs)
    return np.random.default_rng([self.seed, self.epoch]).permutation(n) if self.shuffle else np.arange(n)

  def image(self, i: int) -> np.ndarray:
    if i not in self._images:   # small sets: each image is decoded and resized once
      self._images[i] = preprocess(self.pairs[i].load_image(), self.image_size, self.norm)
    return self._images[i]

  def batch(self, rows) -> dict:
    return {"images": np.stack([self.image(i) for i in rows]), "tokens": self.tokens[rows],
            "loss_mask": self.loss_mask[rows]}

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    if self.position + self.batch_size > len(self.pairs):   # drop the ragged tail of an epoch
      self.epoch, self.position = self.epoch + 1, 0
    rows = self._order()[self.position:self.position + self.batch_size]
    self.position += self.batch_size
    return self.batch(rows)

  def get_state(self) -> dict:
    return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

  def set_state(self, state: dict) -> None:
    self.epoch, self.position = int(state["epoch"]), int(state["position"])
