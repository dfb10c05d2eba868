"""Readers on tiny fake trees in each distribution layout, k-shot selection, and bad input."""
import os

import numpy as np
import pytest

from aajax.data import Loader, class_names
from aajax.data.datasets import few_shot, fingerprint, load_samples, write_jsonl
from aajax.data.sample import Sample, read_image
from aajax.errors import DataError
from tests.data import fake_trees


def _check(samples, n, n_anomalous, classes):
  assert len(samples) == n and sum(s.label for s in samples) == n_anomalous
  assert sorted({s.class_name for s in samples}) == sorted(classes)
  for s in samples:
    image = s.load_image()
    assert image.dtype == np.uint8 and image.shape == (16, 20, 3)
    mask = s.load_mask(image.shape[:2])
    assert set(np.unique(mask)) <= {0, 1} and bool(mask.any()) == bool(s.label)


def test_mvtec_and_mpdd(tmp_path):
  root = fake_trees.mvtec(str(tmp_path / "mvtec"))
  _check(load_samples("mvtec", root, "train"), 6, 0, ["bottle", "screw"])
  test = load_samples("mvtec", root, "test", classes=["screw"])
  _check(test, 4, 2, ["screw"])
  assert {s.defect_type for s in test} == {"good", "crack"}
  assert test[0].id == "screw/test/crack/000.png"
  _check(load_samples("mpdd", root, "test"), 8, 4, ["bottle", "screw"])


def test_visa_split_csv(tmp_path):
  root = fake_trees.visa(str(tmp_path / "visa"))
  _check(load_samples("visa", root, "train"), 4, 0, ["candle", "pcb1"])
  _check(load_samples("visa", root, "test"), 6, 4, ["candle", "pcb1"])


def test_btad_bmad_polyp(tmp_path):
  _check(load_samples("btad", fake_trees.btad(str(tmp_path / "btad")), "test"), 8, 4, ["01", "02"])
  root = fake_trees.bmad(str(tmp_path / "brain"))
  _check(load_samples("brainmri", root, "test"), 5, 3, ["Brain"])
  _check(load_samples("liverct", root, "train"), 2, 0, ["Liver"])
  _check(load_samples("kvasir", fake_trees.polyp(str(tmp_path / "kv"))), 3, 3, ["Kvasir"])


def test_jsonl_round_trip(tmp_path):
  root = str(tmp_path / "kv")
  meta = fake_trees.jsonl(root, str(tmp_path / "full-shot.jsonl"))
  s = load_samples("jsonl", root, meta=meta)
  _check(s, 2, 1, ["Kvasir", "Other"])
  assert load_samples("jsonl", root, classes=["Other"], meta=meta)[0].label == 0
  out = str(tmp_path / "again.jsonl")
  write_jsonl(s, out, root)
  again = load_samples("jsonl", root, meta=out)
  assert [x.image for x in again] == [x.image for x in s]
  assert [x.mask for x in again] == [x.mask for x in s]


def test_few_shot_is_balanced_seeded_and_order_free():
  samples = [Sample("x", None, i % 3 == 0, c, id=f"{c}/{i}") for c in "ab" for i in range(30)]
  k = few_shot(samples, 4, seed=1)
  assert len(k) == 8
  for c in "ab":
    assert sorted(s.label for s in k if s.class_name == c) == [0, 0, 1, 1]
  assert [s.id for s in few_shot(samples[::-1], 4, seed=1)] == [s.id for s in k][::-1]
  assert fingerprint(few_shot(samples, 4, seed=2)) != fingerprint(k)
  with pytest.raises(DataError, match="fewer than"):
    few_shot(samples, 40)


def test_class_tables():
  assert class_names.real_name("bottle", "mvtec") == "dark bottle"
  assert class_names.real_name("Brain") == "scan"
  assert class_names.domain("Kvasir") == "Medical" and class_names.domain("pcb1") == "Industrial"
  assert class_names.domain("retina", "synthetic") == "Medical"
  assert class_names.real_name("new_part") == "new part"


# ------------------------------------------------------------------------------------- bad input

def test_missing_root_and_wrong_layout(tmp_path):
  with pytest.raises(DataError, match="does not exist.*MVTec AD layout"):
    load_samples("mvtec", str(tmp_path / "nope"), "test")
  os.makedirs(tmp_path / "flat")
  fake_trees._img(str(tmp_path / "flat" / "a.png"))
  with pytest.raises(DataError, match="expected the MVTec AD layout"):
    load_samples("mvtec", str(tmp_path / "flat"), "test")
  with pytest.raises(DataError, match="1cls.csv"):
    load_samples("visa", str(tmp_path / "flat"), "test")
  with pytest.raises(DataError, match="BMAD layout"):
    load_samples("brainmri", str(tmp_path / "flat"), "test")
  with pytest.raises(DataError, match="polyp layout"):
    load_samples("kvasir", str(tmp_path / "flat"))
  with pytest.raises(DataError, match="unknown data set"):
    load_samples("imagenet", str(tmp_path), "test")
  root = fake_trees.mvtec(str(tmp_path / "m"))
  with pytest.raises(DataError, match=r"classes \['cable'\] not found"):
    load_samples("mvtec", root, "test", classes=["cable"])
  os.remove(f"{root}/bottle/ground_truth/crack/001_mask.png")
  with pytest.raises(DataError, match="no ground-truth mask"):
    load_samples("mvtec", root, "test")


def test_bad_jsonl(tmp_path):
  meta = tmp_path / "m.jsonl"
  meta.write_text('{"image_path": "a.png", "label": 1, "class_name": "x"}\n')
  with pytest.raises(DataError, match="line 1: anomalous image a.png has no mask_path"):
    load_samples("jsonl", str(tmp_path), meta=str(meta))
  meta.write_text('{"image_path": "a.png"}\n')
  with pytest.raises(DataError, match="line 1"):
    load_samples("jsonl", str(tmp_path), meta=str(meta))
  with pytest.raises(DataError, match="not found"):
    load_samples("jsonl", str(tmp_path), "missing")


def test_truncated_image_and_wrong_mask_size(tmp_path):
  root = fake_trees.mvtec(str(tmp_path / "m"), classes=("bottle",))
  bad = f"{root}/bottle/test/crack/000.png"
  data = open(bad, "rb").read()
  open(bad, "wb").write(data[: len(data) // 2])
  with pytest.raises(DataError, match="cannot decode image .*000.png"):
    read_image(bad)
  samples = load_samples("mvtec", root, "test")
  with pytest.raises(DataError, match="cannot decode"):
    list(Loader(samples, 2, 8))
  fake_trees._mask(f"{root}/bottle/ground_truth/crack/001_mask.png", size=(10, 10))
  s = [x for x in load_samples("mvtec", root, "test") if x.id.endswith("crack/001.png")][0]
  with pytest.raises(DataError, match="mask .* is 10x10 .* image is 20x16"):
    s.load_mask(s.load_image().shape[:2])
  with pytest.raises(DataError, match="not found"):
    Sample(str(tmp_path / "none.png"), None, 0, "c").load_image()
