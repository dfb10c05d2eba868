"""Resize, normalisation and augmentations against torchvision-equivalent references."""
import numpy as np
import pytest
from PIL import Image

from aajax.data import transforms as T
from aajax.errors import InputError


def test_preprocess_matches_pil_bicubic_and_clip_norm():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
  out = T.preprocess(image, 24, "clip")
  ref = np.asarray(Image.fromarray(image).resize((24, 24), Image.BICUBIC), np.float32) / 255.0
  mean, std = T.NORMS["clip"]
  np.testing.assert_allclose(out, (ref - np.float32(mean)) / np.float32(std), rtol=0, atol=1e-6)
  assert out.dtype == np.float32 and out.shape == (24, 24, 3)
  np.testing.assert_array_equal(T.denormalize(T.preprocess(image, 37, "siglip")[:, :37], "siglip"),
                                np.asarray(Image.fromarray(image).resize((37, 37), Image.BICUBIC)))
  with pytest.raises(InputError, match="normalisation"):
    T.preprocess(image, 8, "nope")
  with pytest.raises(InputError, match="uint8 RGB"):
    T.preprocess(image.astype(np.float32), 8)


def test_torchvision_normalize_equivalence():
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(1)
  image = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
  mean, std = T.NORMS["clip"]
  t = torch.from_numpy(image).permute(2, 0, 1).float() / 255.0
  t = (t - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
  np.testing.assert_allclose(T.normalize(image, "clip"), t.permute(1, 2, 0).numpy(), atol=1e-6)


def test_mask_resize_is_nearest_and_binary():
  mask = np.zeros((10, 10), np.uint8)
  mask[2:5, 2:5] = 255
  out = T.resize_mask(mask, 20)
  assert out.dtype == np.uint8 and set(np.unique(out)) == {0, 1}
  np.testing.assert_array_equal(out[4:10, 4:10], 1)
  assert out.sum() == 36


def test_geometry_moves_image_and_mask_together():
  rng = np.random.default_rng(5)
  image = np.zeros((32, 32, 3), np.float32)
  mask = np.zeros((32, 32), np.float32)
  image[5:12, 8:20] = 1.0
  mask[5:12, 8:20] = 1.0
  for seed in range(20):
    x, m = T.random_geometry(image, mask, np.random.default_rng(seed))
    np.testing.assert_array_equal(x[..., 0] > 0.5, m > 0.5)
    assert set(np.unique(m)) <= {0.0, 1.0}
  x, m = T.random_geometry(image, mask, rng, degrees=0.0, translate=0.0)
  assert m.sum() == mask.sum()


def test_color_jitter_keeps_uint8_and_is_seeded():
  image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
  a = T.color_jitter(image, np.random.default_rng(1))
  b = T.color_jitter(image, np.random.default_rng(1))
  assert a.dtype == np.uint8 and np.array_equal(a, b)
