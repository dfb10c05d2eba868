"""The record every data set reader produces, and decoding of its image and mask.

A `Sample` names one image: either a file path (real data sets are read lazily, in the loader's
worker) or an in-memory uint8 array (the synthetic set). Its mask is a path, a uint8 {0,1} array or
None; None means "no defect pixels" and is what normal images carry.
"""
import dataclasses
import os

import numpy as np
from PIL import Image

from aajax.errors import DataError


@dataclasses.dataclass(frozen=True, eq=False)
class Sample:
  image: "str | np.ndarray"          # file path, or uint8 RGB array [H, W, 3]
  mask: "str | np.ndarray | None"    # file path, uint8 {0,1} array [H, W], or None (all normal)
  label: int                         # 0 normal, 1 anomalous
  class_name: str
  defect_type: str = "good"
  id: str = ""

  @property
  def image_path(self):
    return self.image if isinstance(self.image, str) else None

  def load_image(self) -> np.ndarray:
    """uint8 RGB [H, W, 3]."""
    if isinstance(self.image, np.ndarray):
      return self.image
    return read_image(self.image)

  def load_mask(self, shape: tuple[int, int]) -> np.ndarray:
    """uint8 {0,1} [H, W] at the image's size `shape`; zeros when the sample has no mask."""
    if self.mask is None:
      return np.zeros(shape, np.uint8)
    if isinstance(self.mask, np.ndarray):
      mask = (self.mask != 0).astype(np.uint8)
      source = f"in-memory mask of {self.id or self.class_name}"
    else:
      mask = read_mask(self.mask)
      source = self.mask
    if mask.shape != tuple(shape):
      raise DataError(f"mask {source} is {mask.shape[1]}x{mask.shape[0]} (WxH) but its image is "
                      f"{shape[1]}x{shape[0]}; a mask must have the size of its image")
    return mask


def _open(path: str, mode: str) -> np.ndarray:
  if not os.path.isfile(path):
    raise DataError(f"image file not found: {path}")
  try:
    with Image.open(path) as im:
      im.load()  # decode now, so a truncated file fails here and not later
      if mode == "RGB" and im.mode in ("I;16", "I;16B", "I"):  # 16-bit scans: scale to 8 bits
        arr = np.asarray(im, np.float64)
        arr = (arr / max(arr.max(), 1.0) * 255.0).round().astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=-1)
      return np.asarray(im.convert(mode))
  except (OSError, SyntaxError, ValueError) as e:
    raise DataError(f"cannot decode image {path}: {e}") from None


def read_image(path: str) -> np.ndarray:
  """Decode an image file to uint8 RGB [H, W, 3]; DataError if missing or unreadable."""
  return _open(path, "RGB")


def read_mask(path: str) -> np.ndarray:
  """Decode a mask file to uint8 {0,1} [H, W]; any non-zero value is a defect pixel."""
  return (_open(path, "L") != 0).astype(np.uint8)
