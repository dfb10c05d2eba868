"""Image and mask transforms of the AA-CLIP recipe, on the host in numpy.

Test time: square resize (PIL bicubic on the uint8 image, exactly what torchvision's
`Resize((s, s), BICUBIC)` does to a PIL image; aspect ratio not kept, no centre crop), scale to
[0, 1] in float32 and normalise with the backbone's constants. Masks are resized with nearest
neighbour and binarised (`mask != 0`).

Training adds the reference augmentations: colour jitter on the uint8 image before the resize
(brightness, contrast, saturation 0.5, each applied with probability 0.7, in random order), then,
on the normalised image and its mask together, rotation +-30 deg (p 0.5), translation +-15 % (p 0.5),
horizontal and vertical flips (p 0.5 each). Geometry uses nearest neighbour and fills with 0 --
in normalised space, i.e. the mean colour -- as torchvision's defaults do in the reference.
"""
import numpy as np
from PIL import Image

from aajax.errors import InputError

# (mean, std) per backbone family. CLIP: OpenAI's constants; SigLIP: maps [0, 1] to [-1, 1].
NORMS = {
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    "siglip": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}


def _norm(norm):
  if isinstance(norm, str):
    if norm not in NORMS:
      raise InputError(f"unknown normalisation {norm!r}; expected one of {sorted(NORMS)}")
    return NORMS[norm]
  return norm


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
  """uint8 [H, W, 3] -> uint8 [size, size, 3], PIL bicubic (torchvision's Resize on PIL images)."""
  if image.shape[:2] == (size, size):
    return image
  return np.asarray(Image.fromarray(image).resize((size, size), Image.BICUBIC))


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
  """{0,1} or {0,255} [H, W] -> uint8 {0,1} [size, size], nearest neighbour then binarised."""
  mask = (mask != 0).astype(np.uint8)
  if mask.shape != (size, size):
    mask = np.asarray(Image.fromarray(mask).resize((size, size), Image.NEAREST))
  return mask


def normalize(image_uint8: np.ndarray, norm="clip") -> np.ndarray:
  """uint8 HWC -> float32 HWC: x / 255, then (x - mean) / std (torchvision's ToTensor + Normalize)."""
  mean, std = _norm(norm)
  x = image_uint8.astype(np.float32) / np.float32(255.0)
  return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def preprocess(image_uint8: np.ndarray, size: int, norm="clip") -> np.ndarray:
  """uint8 RGB [H, W, 3] -> float32 [size, size, 3], resized and normalised for the backbone."""
  if image_uint8.dtype != np.uint8 or image_uint8.ndim != 3 or image_uint8.shape[-1] != 3:
    raise InputError(f"expected a uint8 RGB image [H, W, 3], got {image_uint8.dtype} {image_uint8.shape}")
  return normalize(resize_image(image_uint8, size), norm)


def denormalize(image: np.ndarray, norm="clip") -> np.ndarray:
  """Inverse of `normalize`, back to uint8 (for pictures of what the model saw)."""
  mean, std = _norm(norm)
  x = image * np.asarray(std, np.float32) + np.asarray(mean, np.float32)
  return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------- augmentations

def _gray(x):
  return x @ np.asarray([0.299, 0.587, 0.114], np.float32)  # ITU-R 601, as PIL "L" and torchvision


def color_jitter(image: np.ndarray, rng: np.random.Generator, strength: float = 0.5,
                 p: float = 0.7) -> np.ndarray:
  """Brightness, contrast and saturation jitter of a uint8 RGB image, each factor in [1-s, 1+s]."""
  x = image.astype(np.float32)
  for op in rng.permutation(3):
    if rng.random() >= p:
      continue
    f = np.float32(rng.uniform(1 - strength, 1 + strength))
    if op == 0:      # brightness: blend with black
      x = x * f
    elif op == 1:    # contrast: blend with the mean grey level
      x = (x - _gray(x).mean()) * f + _gray(x).mean()
    else:            # saturation: blend with the grey image
      g = _gray(x)[..., None]
      x = (x - g) * f + g
    x = np.clip(x, 0, 255)
  return np.round(x).astype(np.uint8)


def _rotate_nearest(x: np.ndarray, degrees: float) -> np.ndarray:
  """Rotate [H, W, C] about the image centre, nearest neighbour, zero fill."""
  h, w = x.shape[:2]
  theta = np.deg2rad(degrees)
  cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
  yy, xx = np.mgrid[0:h, 0:w]
  # Inverse map: output pixel -> source pixel (rotation by -theta).
  sx = np.cos(theta) * (xx - cx) - np.sin(theta) * (yy - cy) + cx
  sy = np.sin(theta) * (xx - cx) + np.cos(theta) * (yy - cy) + cy
  sx, sy = np.rint(sx).astype(np.int64), np.rint(sy).astype(np.int64)
  inside = (sx >= 0) & (sx < w) & (sy >= 0) & (sy < h)
  out = np.zeros_like(x)
  out[inside] = x[sy[inside], sx[inside]]
  return out


def _translate(x: np.ndarray, dy: int, dx: int) -> np.ndarray:
  h, w = x.shape[:2]
  out = np.zeros_like(x)
  ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
  xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
  out[yd, xd] = x[ys, xs]
  return out


def random_geometry(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator,
                    degrees: float = 30.0, translate: float = 0.15):
  """The same random rotation / translation / flips on a float image [H, W, 3] and mask [H, W]."""
  x = np.concatenate([image, mask[..., None].astype(image.dtype)], axis=-1)
  h, w = x.shape[:2]
  if rng.random() < 0.5:
    x = _rotate_nearest(x, rng.uniform(-degrees, degrees))
  if rng.random() < 0.5:
    # torchvision's RandomAffine draws whole-pixel shifts in [-t*W, t*W].
    dx = int(round(rng.uniform(-translate * w, translate * w)))
    dy = int(round(rng.uniform(-translate * h, translate * h)))
    x = _translate(x, dy, dx)
  if rng.random() < 0.5:
    x = x[:, ::-1]
  if rng.random() < 0.5:
    x = x[::-1]
  x = np.ascontiguousarray(x)
  return x[..., :3], x[..., 3]
