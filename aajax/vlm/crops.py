"""Multi-crop overlap tiling, and the stitching and pooling of the local crops' patch features.

An image becomes one global crop (the whole image resized to crop x crop, aspect ratio not kept)
and th x tw local crops of a resized copy of it. Neighbouring local crops overlap by 2 * margin
patches; `select_tiling` picks (th, tw) as the reference does (its "or" rule gives thin strips one
tile). After the ViT, `reconstruct_from_crops` stitches the local patch grids back into one
(19 th + 8) x (19 tw + 8) grid (at 378/14/margin 4), each cell taken from exactly one crop, and
`adaptive_avg_pool` brings it to grid x grid with PyTorch's adaptive-pooling windows.

Host side (numpy + PIL, as the reference's PIL path; pyvips resampling differs by ~1 grey level):
`to_rgb`, `overlap_crop_image`, `normalize`. Device side (jnp, tiling static): reconstruction and
pooling.
"""
import functools
import math

import jax.numpy as jnp
import numpy as np
from PIL import Image

from aajax.errors import InputError
from aajax.vlm.config import VisionConfig


def select_tiling(height: int, width: int, crop_size: int, max_crops: int) -> tuple[int, int]:
  """(rows, cols) of local crops for an image whose margin-less size is height x width."""
  if height <= crop_size or width <= crop_size:
    return (1, 1)
  min_h, min_w = math.ceil(height / crop_size), math.ceil(width / crop_size)
  if min_h * min_w > max_crops:
    ratio = math.sqrt(max_crops / (min_h * min_w))
    return (max(1, math.floor(min_h * ratio)), max(1, math.floor(min_w * ratio)))
  h_tiles = max(math.floor(math.sqrt(max_crops * height / width)), min_h)
  w_tiles = max(math.floor(math.sqrt(max_crops * width / height)), min_w)
  if h_tiles * w_tiles > max_crops:  # shrink the larger side
    if w_tiles > h_tiles:
      w_tiles = math.floor(max_crops / h_tiles)
    else:
      h_tiles = math.floor(max_crops / w_tiles)
  return (max(1, h_tiles), max(1, w_tiles))


def to_rgb(image) -> np.ndarray:
  """A PIL image or HWC/HW array -> HWC uint8 RGB.

  PIL modes go through `convert("RGB")` as in the reference (alpha dropped, palettes expanded).
  Exception, on purpose: 16-bit and 32-bit integer / float images are first scaled to 8 bits
  (full range for 16-bit, min-max otherwise); PIL's own conversion clips them at 255, which turns
  almost any such image white.
  """
  if isinstance(image, np.ndarray):
    arr = image
    if arr.ndim == 3 and arr.shape[-1] == 1:
      arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
      raise InputError(f"image array must be HxW, HxWx1, HxWx3 or HxWx4; got shape {arr.shape}")
    if arr.dtype != np.uint8:
      arr = _to_uint8(arr)
    image = Image.fromarray(arr)
  if not isinstance(image, Image.Image):
    raise InputError(f"expected a PIL image or a numpy array, got {type(image).__name__}")
  if image.width < 1 or image.height < 1:
    raise InputError(f"empty image ({image.width}x{image.height})")
  if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
    image = Image.fromarray(_to_uint8(np.asarray(image)))
  return np.asarray(image.convert("RGB"))


def _to_uint8(arr: np.ndarray) -> np.ndarray:
  """16-bit range -> /257; floats in [0, 1] -> *255; anything else min-max to 0..255."""
  if arr.dtype == bool:
    return arr.astype(np.uint8) * 255
  is_float = np.issubdtype(arr.dtype, np.floating)
  arr = arr.astype(np.float64)
  if not np.isfinite(arr).all():
    raise InputError("image holds NaN or infinite values")
  lo, hi = float(arr.min()), float(arr.max())
  if is_float and lo >= 0 and hi <= 1:
    return (arr * 255).round().astype(np.uint8)
  if not is_float and lo >= 0 and hi <= 65535:
    return (arr / 257.0).round().astype(np.uint8)
  return ((arr - lo) / max(hi - lo, 1e-12) * 255).round().astype(np.uint8)


def overlap_crop_image(image: np.ndarray, cfg: VisionConfig) -> tuple[np.ndarray, tuple[int, int]]:
  """HWC uint8 -> (crops [1 + th*tw, crop, crop, 3] uint8, global first; (th, tw))."""
  crop, patch, margin = cfg.crop_size, cfg.enc_patch_size, cfg.overlap_margin
  margin_px = patch * margin
  window = (crop // patch - 2 * margin) * patch  # fresh pixels per tile (266 at 378/14/4)
  h, w = image.shape[:2]
  tiling = select_tiling(h - 2 * margin_px, w - 2 * margin_px, window, cfg.max_crops)
  target = (tiling[0] * window + 2 * margin_px, tiling[1] * window + 2 * margin_px)
  pil = Image.fromarray(image)
  resized = np.asarray(pil.resize((target[1], target[0]), resample=Image.Resampling.LANCZOS))
  crops = np.empty((1 + tiling[0] * tiling[1], crop, crop, image.shape[2]), np.uint8)
  crops[0] = np.asarray(pil.resize((crop, crop), resample=Image.Resampling.LANCZOS))
  for i in range(tiling[0]):
    for j in range(tiling[1]):  # windows always fit: the resized size is built from the tiling
      y0, x0 = i * window, j * window
      crops[1 + i * tiling[1] + j] = resized[y0:y0 + crop, x0:x0 + crop]
  return crops, tiling


def normalize(crops: np.ndarray, mimic_bf16: bool = False) -> np.ndarray:
  """uint8 -> float32 in [-1, 1] ((x/255 - 0.5) / 0.5). mimic_bf16 rounds each step to bfloat16 as
  the reference does (it normalises after casting to bf16)."""
  if not mimic_bf16:
    return (crops.astype(np.float32) / 255.0 - 0.5) / 0.5
  import ml_dtypes
  bf = ml_dtypes.bfloat16
  x = crops.astype(bf)
  x = (x / bf(255.0)).astype(bf)
  x = (x - bf(0.5)).astype(bf)
  return (x / bf(0.5)).astype(bf).astype(np.float32)


def reconstruct_from_crops(local, tiling: tuple[int, int], margin: int):
  """local [th*tw, g, g, C] row-major tiles -> [(g-2m) th + 2m, (g-2m) tw + 2m, C].

  Tile (y, x) keeps rows [0 if y == 0 else m, g if last row else g - m) (columns alike), so
  interior tiles give their central part, border tiles keep their outer margins, and every output
  cell comes from exactly one tile.
  """
  th, tw = tiling
  g = local.shape[1]
  rows = []
  for y in range(th):
    r0, r1 = (0 if y == 0 else margin), (g if y == th - 1 else g - margin)
    cols = []
    for x in range(tw):
      c0, c1 = (0 if x == 0 else margin), (g if x == tw - 1 else g - margin)
      cols.append(local[y * tw + x, r0:r1, c0:c1])
    rows.append(jnp.concatenate(cols, axis=1))
  return jnp.concatenate(rows, axis=0)


@functools.lru_cache(maxsize=256)
def adaptive_pool_matrix(n_in: int, n_out: int) -> np.ndarray:
  """[n_out, n_in] averaging matrix of PyTorch's adaptive pooling: cell i averages
  [floor(i n_in / n_out), ceil((i + 1) n_in / n_out))."""
  m = np.zeros((n_out, n_in), np.float32)
  for i in range(n_out):
    lo, hi = (i * n_in) // n_out, -(-((i + 1) * n_in) // n_out)
    m[i, lo:hi] = 1.0 / (hi - lo)
  return m


def adaptive_avg_pool(grid, out: int):
  """[H, W, C] -> [out, out, C]; windows are rectangles, so the 2-D mean is two 1-D means."""
  ph = jnp.asarray(adaptive_pool_matrix(grid.shape[0], out))
  pw = jnp.asarray(adaptive_pool_matrix(grid.shape[1], out))
  return jnp.einsum("ih,hwc,jw->ijc", ph, grid.astype(jnp.float32), pw,
                    precision="highest").astype(grid.dtype)
