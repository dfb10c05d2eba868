"""The synthetic defect set: deterministic, exact masks, every defect type, class subsets stable."""
import numpy as np
import pytest

from aajax.data import synthetic
from aajax.data.datasets import load_samples
from aajax.errors import DataError


def test_deterministic_and_balanced():
  a = synthetic.make_synthetic(seed=3, image_size=64, n_train=10, n_test=10)
  synthetic._make_cached.cache_clear()
  b = synthetic.make_synthetic(seed=3, image_size=64, n_train=10, n_test=10)
  assert [s.id for s in a.test] == [s.id for s in b.test]
  for x, y in zip(a.train + a.test, b.train + b.test):
    np.testing.assert_array_equal(x.image, y.image)
    assert (x.mask is None) == (y.mask is None)
    if x.mask is not None:
      np.testing.assert_array_equal(x.mask, y.mask)
  c = synthetic.make_synthetic(seed=4, image_size=64, n_train=10, n_test=10)
  assert not np.array_equal(a.test[0].image, c.test[0].image)
  assert len(a.test) == 10 * len(synthetic.DEFAULT_CLASSES)
  for cls in a.class_names:
    labels = [s.label for s in a.test if s.class_name == cls]
    assert sum(labels) == 5
  assert {s.defect_type for s in a.test if s.label} == set(synthetic.DEFECT_TYPES)
  # train and test are different draws
  assert not any(np.array_equal(x.image, y.image) for x in a.train[:5] for y in a.test[:5])


def test_subset_of_classes_gives_the_same_images():
  full = synthetic.make_synthetic(seed=0, image_size=64, n_train=4, n_test=6)
  sub = synthetic.make_synthetic(seed=0, image_size=64, classes=["gravel"], n_train=4, n_test=6)
  ref = [s for s in full.test if s.class_name == "gravel"]
  for x, y in zip(ref, sub.test):
    np.testing.assert_array_equal(x.image, y.image)


@pytest.mark.parametrize("defect", synthetic.DEFECT_TYPES)
def test_masks_are_exact(defect):
  """A defect changes pixels only inside its mask, and changes a good share of them."""
  for i in range(6):
    rng = np.random.default_rng(i)
    name = ["brick", "coffee", "retina"][i % 3]
    normal = synthetic._normal_image(name, 96, rng)
    image, mask = synthetic.add_defect(normal, defect, rng)
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1}
    changed = np.any(image != normal, axis=-1)
    assert not np.any(changed & (mask == 0)), "pixels changed outside the mask"
    assert changed[mask == 1].mean() > 0.3, f"{defect}: mask much larger than the change"


def test_samples_and_registry():
  s = load_samples("synthetic", None, "test", classes=["brick"], image_size=64, n_test=4)
  assert [x.label for x in s] == [0, 0, 1, 1]
  assert s[2].load_mask((64, 64)).any() and not s[0].load_mask((64, 64)).any()
  assert s[0].image.dtype == np.uint8 and s[0].image.shape == (64, 64, 3)
  assert not s[0].image.flags.writeable  # cached arrays cannot be modified by a consumer
  with pytest.raises(DataError, match="unknown synthetic classes"):
    synthetic.make_synthetic(classes=["nope"])
  with pytest.raises(DataError, match="splits"):
    load_samples("synthetic", None, "valid", image_size=32, n_train=2, n_test=2)


def test_save_mvtec_layout_round_trip(tmp_path):
  s = synthetic.make_synthetic(image_size=48, classes=["coins"], n_train=2, n_test=4)
  synthetic.save_mvtec_layout(s.test, str(tmp_path))
  back = load_samples("mvtec", str(tmp_path), "test")
  assert sorted(x.id for x in back) == sorted(x.id + ".png" for x in s.test)
  by_id = {x.id: x for x in s.test}
  for x in back:
    orig = by_id[x.id[:-4]]
    np.testing.assert_array_equal(x.load_image(), orig.image)
    np.testing.assert_array_equal(x.load_mask((48, 48)), orig.load_mask((48, 48)))
