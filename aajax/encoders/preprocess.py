"""Image preprocessing of both families, equal to the transformers image processors (PIL backend).

  siglip  RGB, bicubic resize to size x size (no crop), x/255, mean = std = 0.5 (values in [-1, 1]);
  clip    RGB, bicubic resize of the shorter side to `size` (the longer one to int(size*long/short)),
          centre crop size x size (top-left at floor of half the excess), x/255, OpenAI mean/std.

Resizing stays in PIL on uint8 pixels as the reference does (jax.image.resize differs from PIL's
bicubic by several grey levels). Transparent images are composited onto white, grey ones
replicated to three channels, as `transformers.image_transforms.convert_to_rgb` does. The result is
NHWC float32, ready for the vision tower.
"""
import dataclasses
import os

import numpy as np

from aajax.errors import DataError, InputError

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
HALF = (0.5, 0.5, 0.5)


@dataclasses.dataclass(frozen=True)
class ImagePreprocessor:
  size: int
  crop: bool                      # CLIP: shorter-side resize + centre crop; SigLIP: squash to square
  mean: tuple = HALF
  std: tuple = HALF

  def __call__(self, images) -> np.ndarray:
    """Images (paths, PIL images or uint8 arrays HxW[xC]) -> float32 [B, size, size, 3]."""
    if not isinstance(images, (list, tuple)):
      images = [images]
    return np.stack([self.one(im) for im in images])

  def one(self, image) -> np.ndarray:
    from PIL import Image
    image = to_rgb(load_image(image) if isinstance(image, (str, os.PathLike)) else image)
    w, h = image.size
    if self.crop:
      short, long = (w, h) if w <= h else (h, w)
      new_long = int(self.size * long / short)
      new_w, new_h = (self.size, new_long) if w <= h else (new_long, self.size)
    else:
      new_w = new_h = self.size
    pixels = np.asarray(image.resize((new_w, new_h), resample=Image.Resampling.BICUBIC))
    if self.crop:
      top, left = (new_h - self.size) // 2, (new_w - self.size) // 2
      pixels = pixels[top:top + self.size, left:left + self.size]
    x = (pixels.astype(np.float64) * (1 / 255)).astype(np.float32)
    return (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)


def for_family(family: str, size: int) -> ImagePreprocessor:
  if family == "siglip":
    return ImagePreprocessor(size, crop=False)
  if family == "clip":
    return ImagePreprocessor(size, crop=True, mean=OPENAI_MEAN, std=OPENAI_STD)
  raise InputError(f"unknown model family {family!r}; expected 'siglip' or 'clip'")


def load_image(path):
  from PIL import Image, UnidentifiedImageError
  if not os.path.exists(path):
    raise DataError(f"image not found: {path}")
  try:
    with Image.open(path) as im:
      im.load()
      return im.copy()
  except (UnidentifiedImageError, OSError, ValueError) as e:
    raise DataError(f"cannot decode image {path}: {e}") from None


def to_rgb(image):
  """PIL image or uint8 array -> RGB PIL image; alpha composited onto white."""
  from PIL import Image
  if isinstance(image, np.ndarray):
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] not in (1, 3, 4)):
      raise InputError(f"image arrays must be uint8 HxW, HxWx1, HxWx3 or HxWx4; got {image.dtype} {image.shape}")
    image = Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image)
  if not isinstance(image, Image.Image):
    raise InputError(f"expected an image path, PIL image or uint8 array, got {type(image).__name__}")
  if "A" in image.getbands() or image.info.get("transparency") is not None:
    image = image.convert("RGBA")
    white = Image.new("RGBA", image.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, image).convert("RGB")
  return image.convert("RGB")
