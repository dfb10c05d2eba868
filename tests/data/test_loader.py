"""Loader: shapes, full coverage for evaluation, exact resume, sharding across processes."""
import numpy as np
import pytest

from aajax.data import Loader, make_synthetic
from aajax.errors import DataError, InputError


@pytest.fixture(scope="module")
def samples():
  return make_synthetic(seed=0, image_size=32, classes=["brick", "coins", "retina"],
                        n_train=6, n_test=5).test  # 15 samples


def test_eval_pass_covers_everything_once(samples):
  loader = Loader(samples, batch_size=4, image_size=16, norm="siglip")
  batches = list(loader)
  assert len(batches) == len(loader) == 4
  b = batches[0]
  assert b["images"].shape == (4, 16, 16, 3) and b["images"].dtype == np.float32
  assert b["masks"].shape == (4, 16, 16) and b["masks"].dtype == np.float32
  assert b["labels"].dtype == np.int32 and b["class_ids"].dtype == np.int32
  valid = np.concatenate([b["valid"] for b in batches])
  idx = np.concatenate([b["indices"] for b in batches])[valid]
  np.testing.assert_array_equal(idx, np.arange(15))
  assert valid.sum() == 15 and batches[-1]["images"].shape[0] == 4   # padded, static shape
  assert loader.class_names == ["brick", "coins", "retina"]
  ids = np.concatenate([b["ids"] for b in batches])[valid]
  assert list(ids) == [s.id for s in samples]
  short = list(Loader(samples, 4, 16, pad_remainder=False))
  assert short[-1]["images"].shape[0] == 3
  assert all(set(np.unique(b["masks"])) <= {0.0, 1.0} for b in batches)


def _take(loader, n):
  it = iter(loader)
  return [next(it) for _ in range(n)]


@pytest.mark.parametrize("drop_remainder", [True, False])
def test_resume_is_exact(samples, drop_remainder):
  kw = dict(batch_size=4, image_size=16, shuffle=True, seed=7, augment=True,
            drop_remainder=drop_remainder)
  ref = _take(Loader(samples, **kw), 9)          # runs over several epochs
  first = Loader(samples, **kw)
  _take(first, 5)
  state = first.get_state()
  resumed = Loader(samples, **kw)
  resumed.set_state(state)
  rest = _take(resumed, 4)
  for a, b in zip(ref[5:], rest):
    np.testing.assert_array_equal(a["indices"], b["indices"])
    np.testing.assert_array_equal(a["images"], b["images"])
    np.testing.assert_array_equal(a["masks"], b["masks"])
  if drop_remainder:   # 15 samples, batch 4: 3 batches an epoch, each epoch a new order
    idx = [set(b["indices"]) for b in ref]
    assert len(set().union(*idx[:3])) == 12
    assert state == {"epoch": 1, "index": 8}
  else:                # every sample once per 15 consecutive draws
    flat = np.concatenate([b["indices"] for b in ref])
    assert sorted(flat[:15]) == list(range(15))


def test_sharding_by_process_reassembles_the_global_batch(samples):
  kw = dict(batch_size=6, image_size=16, shuffle=True, seed=1, augment=True)
  whole = _take(Loader(samples, **kw), 3)
  parts = [_take(Loader(samples, process_index=p, process_count=3, **kw), 3) for p in range(3)]
  for step in range(3):
    for key in ("indices", "images", "labels"):
      joined = np.concatenate([parts[p][step][key] for p in range(3)])
      np.testing.assert_array_equal(joined, whole[step][key])
  assert parts[0][0]["images"].shape[0] == 2


def test_prefetch_off_gives_the_same_batches(samples):
  a = list(Loader(samples, 4, 16, prefetch=0))
  b = list(Loader(samples, 4, 16, prefetch=3, num_workers=2))
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["images"], y["images"])


def test_bad_arguments(samples):
  with pytest.raises(InputError, match="multiple of process_count"):
    Loader(samples, 5, 16, process_count=2)
  with pytest.raises(DataError, match="no samples"):
    Loader([], 4, 16)
  with pytest.raises(DataError, match="cannot fill one batch"):
    Loader(samples[:3], 4, 16, shuffle=True)
  with pytest.raises(InputError, match="out of range"):
    Loader(samples, 4, 16).set_state({"epoch": 0, "index": 99})


def test_loader_is_its_own_iterator(samples):
  """next(loader) works, and set_state restarts it at the saved position."""
  loader = Loader(samples, 4, 16, shuffle=True, seed=2, with_ids=False)
  first = [next(loader) for _ in range(3)]
  assert "ids" not in first[0]
  state = loader.get_state()
  after = next(loader)
  loader.set_state(state)
  np.testing.assert_array_equal(next(loader)["indices"], after["indices"])
