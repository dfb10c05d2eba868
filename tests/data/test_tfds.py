"""TFDS builders on fake trees: prepare to ArrayRecord, read back via tfds.data_source and Grain,
with no TensorFlow imported."""
import sys

import numpy as np
import pytest

from aajax.data import tfds_builders as B
from aajax.data.datasets import load_samples
from aajax.errors import DataError
from tests.data import fake_trees

pytest.importorskip("tensorflow_datasets")
pytest.importorskip("grain")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("tfds")
  roots = {"mvtec": fake_trees.mvtec(str(tmp / "mvtec")),
           "visa": fake_trees.visa(str(tmp / "visa"))}
  data_dir = str(tmp / "data")
  for name, root in roots.items():
    B.prepare(name, root, data_dir)
  return roots, data_dir


@pytest.mark.parametrize("name", ["mvtec", "visa"])
def test_records_equal_the_files(prepared, name):
  roots, data_dir = prepared
  for split in ("train", "test"):
    want = {s.id: s for s in load_samples(name, roots[name], split)}
    src = B.data_source(name, data_dir, split)
    assert len(src) == len(want)
    for i in range(len(src)):
      r = src[i]
      s = want[r["id"].decode()]
      image = s.load_image()
      np.testing.assert_array_equal(r["image"], image)
      np.testing.assert_array_equal(r["mask"][..., 0], s.load_mask(image.shape[:2]))
      assert r["label"] == s.label and r["class_name"].decode() == s.class_name
  assert B.class_names(name, data_dir) == sorted({s.class_name for s in want.values()})
  assert "tensorflow" not in sys.modules


def test_grain_batches_shards_and_resume(prepared):
  _, data_dir = prepared
  src = B.data_source("mvtec", data_dir, "test")
  classes = B.class_names("mvtec", data_dir)
  batches = list(B.grain_dataset(src, 3, 16, classes, norm="siglip"))
  ids = np.concatenate([b["ids"] for b in batches])
  assert sorted(ids) == sorted(src[i]["id"].decode() for i in range(len(src)))
  assert batches[0]["images"].shape == (3, 16, 16, 3) and batches[0]["masks"].dtype == np.float32
  shards = [np.concatenate([b["ids"] for b in B.grain_dataset(src, 2, 16, classes,
                                                              process_index=p, process_count=2)])
            for p in range(2)]
  assert not set(shards[0]) & set(shards[1]) and len(shards[0]) + len(shards[1]) == len(src)

  train = B.grain_dataset(src, 2, 16, classes, shuffle=True, seed=3, augment=True)
  it = iter(train.to_iter_dataset())
  ref = [next(it) for _ in range(7)]           # endless, across epochs
  it2 = iter(train.to_iter_dataset())
  [next(it2) for _ in range(4)]
  state = it2.get_state()
  it3 = iter(train.to_iter_dataset())
  it3.set_state(state)
  for a in ref[4:]:
    b = next(it3)
    np.testing.assert_array_equal(a["images"], b["images"])
    assert list(a["ids"]) == list(b["ids"])


def test_errors(tmp_path):
  with pytest.raises(DataError, match="does not exist"):
    B.prepare("mvtec", str(tmp_path / "none"), str(tmp_path / "data"))
  with pytest.raises(DataError, match="not prepared"):
    B.data_source("btad", str(tmp_path / "data"), "test")
  with pytest.raises(DataError, match="no TFDS config"):
    B.builder("jsonl", str(tmp_path))
  (tmp_path / "flat").mkdir()
  with pytest.raises(DataError, match="MVTec AD layout"):
    B.prepare("mvtec", str(tmp_path / "flat"), str(tmp_path / "data2"))


def test_prepare_from_archive(tmp_path):
  import tarfile
  root = fake_trees.btad(str(tmp_path / "BTech_Dataset"))
  archive = tmp_path / "dl" / "btad.tar.gz"
  archive.parent.mkdir()
  with tarfile.open(archive, "w:gz") as t:
    t.add(root, arcname="BTech_Dataset")
  data_dir = str(tmp_path / "data")
  B.prepare("btad", str(archive.parent), data_dir)   # the folder that holds only the archive
  src = B.data_source("btad", data_dir, "test")
  assert len(src) == 8 and B.class_names("btad", data_dir) == ["01", "02"]
  bad = tmp_path / "bad.zip"
  bad.write_bytes(b"not a zip")
  with pytest.raises(DataError, match="cannot extract"):
    B.prepare("btad", str(bad), str(tmp_path / "data3"))
