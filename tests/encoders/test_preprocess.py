"""Image preprocessing against transformers' SigLIP and CLIP image processors (PIL backend)."""
import numpy as np
import pytest
from PIL import Image
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

from aajax.encoders.preprocess import for_family
from aajax.errors import DataError, InputError


def images(seed=0):
  rng = np.random.default_rng(seed)
  rgb = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((61, 90), (120, 47), (50, 50))]
  gray = Image.fromarray(rng.integers(0, 256, (70, 55), dtype=np.uint8))
  rgba = Image.fromarray(rng.integers(0, 256, (40, 66, 4), dtype=np.uint8), "RGBA")
  return rgb + [gray, rgba]


@pytest.mark.parametrize("family,ref", [("siglip", SiglipImageProcessorPil(size={"height": 32, "width": 32})),
                                        ("clip", CLIPImageProcessorPil(size={"shortest_edge": 32},
                                                                      crop_size={"height": 32, "width": 32}))])
def test_matches_transformers(family, ref):
  ims = images()
  got = for_family(family, 32)(ims)
  assert got.shape == (len(ims), 32, 32, 3) and got.dtype == np.float32
  want = np.stack([np.asarray(ref(im)["pixel_values"][0]) for im in ims]).transpose(0, 2, 3, 1)
  np.testing.assert_allclose(got, want, atol=1e-6)


def test_grayscale_rgba_arrays_and_paths(tmp_path):
  pre = for_family("clip", 32)
  gray = np.random.default_rng(1).integers(0, 256, (40, 40), dtype=np.uint8)
  np.testing.assert_array_equal(pre(gray), pre(np.repeat(gray[..., None], 3, -1)))
  np.testing.assert_array_equal(pre(gray[..., None]), pre(gray))
  opaque = np.concatenate([np.repeat(gray[..., None], 3, -1), np.full((40, 40, 1), 255, np.uint8)], -1)
  np.testing.assert_array_equal(pre(opaque), pre(gray))
  clear = opaque.copy()
  clear[..., 3] = 0  # fully transparent: white
  assert np.allclose(pre(clear), pre(np.full((40, 40, 3), 255, np.uint8)))
  Image.fromarray(gray).save(tmp_path / "g.png")
  np.testing.assert_array_equal(pre(str(tmp_path / "g.png")), pre(gray))


def test_bad_images(tmp_path):
  pre = for_family("siglip", 32)
  (tmp_path / "bad.png").write_bytes(b"not an image")
  with pytest.raises(DataError, match="cannot decode image"):
    pre(str(tmp_path / "bad.png"))
  with pytest.raises(DataError, match="not found"):
    pre(str(tmp_path / "none.png"))
  with pytest.raises(InputError, match="uint8"):
    pre(np.zeros((8, 8, 3), np.float32))
  with pytest.raises(InputError, match="unknown model family"):
    for_family("vit", 32)
