"""The embedded synthetic defect data set: scikit-image's CC0 / public-domain sample images with
painted defects and exact masks. No download; a few hundred 256 px images take about a second.

Every class is one source image. Normal images are random crops of it (textures) or of a slightly
enlarged copy (objects), with a small brightness change, so no two are identical. Anomalous images
are normal images with one defect painted in, of the five kinds in `DEFECT_TYPES`:

  scratch    a thin curved stroke, darker or brighter than the surface
  spot       a filled ellipse of a foreign colour; "hole" variant is near-black
  cut_paste  a rectangle copied from elsewhere in the image, turned and re-lit
  stain      an irregular translucent blob of colour
  deform     a local swirl of the surface

Masks are exact by construction: a defect writes only pixels inside its mask, so outside the mask
an anomalous image is bit-identical to the normal image it was made from (the tests check that).

Both splits mix normal and anomalous images, because the AA recipe trains on a labelled auxiliary
set; train and test images are different draws. Each image has its own random stream keyed by
(seed, class, split, index), so asking for a subset of classes yields the very same images.
"""
import dataclasses
import functools
import os

import numpy as np
from PIL import Image

from aajax.data.sample import Sample
from aajax.errors import DataError

DEFECT_TYPES = ("scratch", "spot", "cut_paste", "stain", "deform")


@dataclasses.dataclass(frozen=True)
class _Source:
  file: str          # file name in skimage/data
  kind: str          # "texture": random crops; "object": the whole image, jittered
  tint: tuple = (1.0, 1.0, 1.0)   # colour for grey sources
  real_name: str = ""
  domain: str = "Industrial"


# Licences are stated in scikit-image's docstrings: brick, grass, gravel (CC0Textures, CC0);
# coffee (CC0, R. Michetti); coins (no known copyright restrictions); retina (CC0);
# cell (CC0); chelsea (CC0).
SOURCES = {
    "brick": _Source("brick.png", "texture", (1.15, 0.62, 0.48), "brick wall"),
    "grass": _Source("grass.png", "texture", (0.62, 1.0, 0.45), "grass texture"),
    "gravel": _Source("gravel.png", "texture", (0.95, 0.88, 0.78), "gravel surface"),
    "coffee": _Source("coffee.png", "object", real_name="cup of coffee on a saucer"),
    "coins": _Source("coins.png", "object", (1.0, 0.9, 0.7), "old coins on a tray"),
    "retina": _Source("retina.jpg", "object", real_name="scan", domain="Medical"),
    "cell": _Source("cell.png", "texture", (0.9, 0.9, 1.0), "scan", "Medical"),
    "chelsea": _Source("chelsea.png", "object", real_name="tabby cat"),
}
DEFAULT_CLASSES = ("brick", "grass", "gravel", "coffee", "coins", "retina")
_SPLIT_CODE = {"train": 1, "test": 2}


@dataclasses.dataclass(frozen=True)
class SyntheticSet:
  train: list
  test: list
  class_names: tuple
  real_names: dict     # class -> name used in prompts
  domains: dict        # class -> "Industrial" | "Medical"

  def split(self, name: str) -> list:
    if name not in _SPLIT_CODE:
      raise DataError(f"synthetic set has splits 'train' and 'test', not {name!r}")
    return getattr(self, name)


@functools.lru_cache(maxsize=32)
def _source_image(name: str, side: int) -> np.ndarray:
  """float32 RGB [side, side, 3] in [0, 255] (textures: the whole texture at `side` px)."""
  import skimage.data
  src = SOURCES[name]
  path = os.path.join(os.path.dirname(skimage.data.__file__), src.file)
  with Image.open(path) as im:
    im = im.convert("L") if im.mode in ("L", "I", "I;16") else im.convert("RGB")
    im = im.resize((side, side), Image.BICUBIC)
    x = np.asarray(im, np.float32)
  if x.ndim == 2:
    x = x[..., None] * np.asarray(src.tint, np.float32)
  return np.clip(x, 0, 255)


def _normal_image(name: str, size: int, rng: np.random.Generator) -> np.ndarray:
  src = SOURCES[name]
  if src.kind == "texture":
    big = _source_image(name, 2 * size)    # crops see a quarter of the texture
  else:
    big = _source_image(name, int(round(size * 1.12)))  # objects move by up to 12 %
  oy, ox = rng.integers(0, big.shape[0] - size + 1, size=2)
  x = big[oy:oy + size, ox:ox + size]
  if src.kind == "texture" and rng.random() < 0.5:
    x = x[:, ::-1]
  x = x * np.float32(rng.uniform(0.92, 1.08))
  return np.clip(np.round(x), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------ defects

def _coords(size):
  yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
  return yy, xx


def _scratch(x, rng):
  size = x.shape[0]
  p0 = rng.uniform(0.15, 0.85, 2) * size
  angle = rng.uniform(0, np.pi)
  length = rng.uniform(0.25, 0.55) * size
  p2 = np.clip(p0 + length * np.array([np.sin(angle), np.cos(angle)]), 2, size - 3)
  p1 = (p0 + p2) / 2 + rng.normal(0, 0.08 * size, 2)
  t = np.linspace(0, 1, 48)[:, None]
  pts = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t ** 2 * p2      # quadratic Bezier
  half_width = rng.uniform(0.8, 1.8) * max(size / 256, 0.6)
  # Distance to the polyline, evaluated only in the stroke's bounding box.
  lo = np.maximum(np.floor(pts.min(0) - half_width - 1), 0).astype(int)
  hi = np.minimum(np.ceil(pts.max(0) + half_width + 2), size).astype(int)
  yy, xx = np.mgrid[lo[0]:hi[0], lo[1]:hi[1]].astype(np.float32)
  dist = np.full(yy.shape, np.inf, np.float32)
  for (ay, ax), (by, bx) in zip(pts[:-1], pts[1:]):
    dy, dx = by - ay, bx - ax
    u = np.clip(((yy - ay) * dy + (xx - ax) * dx) / max(dy * dy + dx * dx, 1e-6), 0, 1)
    dist = np.minimum(dist, np.hypot(yy - (ay + u * dy), xx - (ax + u * dx)))
  mask = np.zeros((size, size), bool)
  mask[lo[0]:hi[0], lo[1]:hi[1]] = dist <= half_width
  colour = rng.uniform(215, 250, 3) if rng.random() < 0.5 else rng.uniform(5, 40, 3)
  x[mask] = 0.15 * x[mask] + 0.85 * colour
  return mask


def _ellipse_mask(size, centre, radii, angle):
  yy, xx = _coords(size)
  c, s = np.cos(angle), np.sin(angle)
  u = ((xx - centre[1]) * c + (yy - centre[0]) * s) / radii[1]
  v = (-(xx - centre[1]) * s + (yy - centre[0]) * c) / radii[0]
  return u * u + v * v <= 1.0


def _spot(x, rng):
  size = x.shape[0]
  radii = rng.uniform(0.03, 0.08, 2) * size + 1.5
  centre = rng.uniform(0.15, 0.85, 2) * size
  mask = _ellipse_mask(size, centre, radii, rng.uniform(0, np.pi))
  if rng.random() < 0.5:   # hole: dark, with a little of the surface showing through
    x[mask] = 0.1 * x[mask] + rng.uniform(0, 20)
  else:
    x[mask] = rng.uniform(0, 255, 3)
  return mask


def _cut_paste(x, rng):
  size = x.shape[0]
  h, w = (rng.uniform(0.1, 0.25, 2) * size).astype(int) + 3
  side = max(h, w)
  sy, sx = rng.integers(0, size - side + 1, 2)
  patch = np.rot90(x[sy:sy + side, sx:sx + side], k=int(rng.integers(1, 4)))[:h, :w]
  gain = rng.choice([rng.uniform(0.55, 0.8), rng.uniform(1.25, 1.5)])
  ty, tx = rng.integers(0, size - h + 1), rng.integers(0, size - w + 1)
  mask = np.zeros((size, size), bool)
  mask[ty:ty + h, tx:tx + w] = True
  x[ty:ty + h, tx:tx + w] = np.clip(patch * gain, 0, 255)
  return mask


def _stain(x, rng):
  size = x.shape[0]
  yy, xx = _coords(size)
  centre = rng.uniform(0.2, 0.8, 2) * size
  scale = rng.uniform(0.04, 0.09) * size
  field = np.zeros((size, size), np.float32)
  for _ in range(int(rng.integers(3, 6))):    # a few overlapping bumps make an irregular blob
    c = centre + rng.normal(0, scale, 2)
    r = scale * rng.uniform(0.6, 1.3)
    field += np.exp(-((yy - c[0]) ** 2 + (xx - c[1]) ** 2) / (2 * r * r))
  mask = field >= 0.6
  colour = np.asarray([(180, 70, 20), (40, 70, 190), (120, 30, 130), (20, 120, 40)][rng.integers(4)],
                      np.float32)
  alpha = np.float32(rng.uniform(0.5, 0.75))
  x[mask] = (1 - alpha) * x[mask] + alpha * colour
  return mask


def _deform(x, rng):
  size = x.shape[0]
  yy, xx = _coords(size)
  radius = rng.uniform(0.08, 0.15) * size
  c = rng.uniform(0.2, 0.8, 2) * size
  dy, dx = yy - c[0], xx - c[1]
  r = np.hypot(dy, dx)
  angle = rng.choice([-1, 1]) * rng.uniform(1.5, 3.0) * np.clip(1 - r / radius, 0, 1) ** 2
  sy = c[0] + np.sin(angle) * dx + np.cos(angle) * dy
  sx = c[1] + np.cos(angle) * dx - np.sin(angle) * dy
  # Move only pixels displaced by half a pixel or more: the mask is where the surface moved.
  mask = np.hypot(sy - yy, sx - xx) >= 0.5
  src = x.copy()
  y0 = np.clip(np.floor(sy[mask]).astype(int), 0, size - 2)
  x0 = np.clip(np.floor(sx[mask]).astype(int), 0, size - 2)
  fy = np.clip(sy[mask] - y0, 0, 1)[:, None]
  fx = np.clip(sx[mask] - x0, 0, 1)[:, None]
  x[mask] = ((1 - fy) * ((1 - fx) * src[y0, x0] + fx * src[y0, x0 + 1])
             + fy * ((1 - fx) * src[y0 + 1, x0] + fx * src[y0 + 1, x0 + 1]))
  return mask


_PAINTERS = {"scratch": _scratch, "spot": _spot, "cut_paste": _cut_paste, "stain": _stain,
             "deform": _deform}


def add_defect(image: np.ndarray, defect_type: str, rng: np.random.Generator):
  """Paint one defect into a copy of a uint8 RGB image; returns (image uint8, mask uint8 {0,1})."""
  x = image.astype(np.float32)
  mask = _PAINTERS[defect_type](x, rng)
  out = image.copy()
  out[mask] = np.clip(np.round(x[mask]), 0, 255).astype(np.uint8)   # nothing outside the mask
  return out, mask.astype(np.uint8)


# --------------------------------------------------------------------------------------- the set

def _make_class(name, split, n, seed, size, anomaly_fraction):
  n_anomalous = int(round(n * anomaly_fraction))
  class_code = sorted(SOURCES).index(name)
  samples = []
  for i in range(n):
    rng = np.random.default_rng([seed, class_code, _SPLIT_CODE[split], i])
    image = _normal_image(name, size, rng)
    image.flags.writeable = False
    if i < n - n_anomalous:
      samples.append(Sample(image, None, 0, name, "good", f"{name}/{split}/good/{i:03d}"))
      continue
    defect = DEFECT_TYPES[(i - (n - n_anomalous)) % len(DEFECT_TYPES)]
    image, mask = add_defect(image, defect, rng)
    image.flags.writeable = mask.flags.writeable = False
    if not mask.any():  # cannot happen with the size bounds above; keep labels honest anyway
      raise AssertionError(f"empty defect mask for {name} {split} {i}")
    samples.append(Sample(image, mask, 1, name, defect, f"{name}/{split}/{defect}/{i:03d}"))
  return samples


@functools.lru_cache(maxsize=8)
def _make_cached(seed, image_size, classes, n_train, n_test, anomaly_fraction):
  train, test = [], []
  for name in classes:
    train += _make_class(name, "train", n_train, seed, image_size, anomaly_fraction)
    test += _make_class(name, "test", n_test, seed, image_size, anomaly_fraction)
  return SyntheticSet(train, test, classes, {c: SOURCES[c].real_name for c in classes},
                      {c: SOURCES[c].domain for c in classes})


def make_synthetic(seed: int = 0, image_size: int = 256, classes=None, n_train: int = 32,
                   n_test: int = 32, anomaly_fraction: float = 0.5) -> SyntheticSet:
  """The synthetic defect set: `n_train` / `n_test` images per class, `anomaly_fraction` of them
  anomalous (defect types in turn). Classes default to `DEFAULT_CLASSES`; any of `SOURCES`."""
  classes = tuple(DEFAULT_CLASSES if classes is None else classes)
  unknown = [c for c in classes if c not in SOURCES]
  if unknown:
    raise DataError(f"unknown synthetic classes {unknown}; available: {sorted(SOURCES)}")
  if image_size < 32:
    raise DataError(f"synthetic images need image_size >= 32, got {image_size}")
  if not 0.0 <= anomaly_fraction <= 1.0:
    raise DataError(f"anomaly_fraction must be in [0, 1], got {anomaly_fraction}")
  # Samples hold read-only arrays, so a cached set can be shared safely.
  return _make_cached(int(seed), int(image_size), classes, int(n_train), int(n_test),
                      float(anomaly_fraction))


def save_mvtec_layout(samples: list, root: str) -> None:
  """Write samples as an MVTec AD tree: <cls>/<split>/<defect>/NNN.png and
  <cls>/ground_truth/<defect>/NNN_mask.png (0/255). Sample ids must be cls/split/defect/NNN."""
  for s in samples:
    cls, split, defect, stem = s.id.split("/")
    path = os.path.join(root, cls, split, defect, stem + ".png")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(s.load_image()).save(path)
    if s.label:
      mpath = os.path.join(root, cls, "ground_truth", defect, stem + "_mask.png")
      os.makedirs(os.path.dirname(mpath), exist_ok=True)
      Image.fromarray(s.load_mask(s.load_image().shape[:2]) * 255).save(mpath)
