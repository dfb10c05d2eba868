"""Images from request URLs: `data:` URLs (base64 JPEG / PNG / WebP) and local files under an
allowed folder, with size and pixel limits checked before any pixel is decoded.

`load_image_url` returns a `RequestImage`: RGB pixels and a content hash of those pixels (the
image-cache key, so the same picture hits the cache whatever its container or metadata).
Every failure is an `ApiError`: 400 for a malformed or unsupported image, 413 for one too large.
"""
import base64
import binascii
import dataclasses
import hashlib
import io
import os
import urllib.parse
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from aajax.errors import InputError
from aajax.serve.errors import bad_request, too_large
from aajax.serve.settings import ServeSettings
from aajax.vlm.crops import to_rgb

MIME_FORMATS = {"image/jpeg": "JPEG", "image/jpg": "JPEG", "image/png": "PNG", "image/webp": "WEBP"}
FORMATS = frozenset(MIME_FORMATS.values())


@dataclasses.dataclass(frozen=True)
class RequestImage:
  pixels: np.ndarray  # HWC uint8 RGB
  key: str            # sha256 of shape + pixels

  @property
  def size(self) -> tuple[int, int]:
    return self.pixels.shape[1], self.pixels.shape[0]


def _data_url_bytes(url: str, limits: ServeSettings, param: str) -> bytes:
  head, sep, payload = url.partition(",")
  if not sep:
    raise bad_request("malformed data URL: no ',' before the payload", "invalid_image_url", param)
  fields = head[len("data:"):].split(";")
  mime = fields[0].strip().lower()
  if mime not in MIME_FORMATS:
    raise bad_request(f"unsupported image type {mime or '(none)'!r}; send image/jpeg, image/png or image/webp",
                      "unsupported_image_type", param)
  if "base64" not in (f.strip().lower() for f in fields[1:]):
    raise bad_request("data URL must be base64 encoded (data:image/png;base64,...)", "invalid_image_url", param)
  # 4 base64 characters per 3 bytes: refuse before decoding anything too large
  if len(payload) * 3 // 4 > limits.max_image_bytes:
    raise too_large(f"image of about {len(payload) * 3 // 4} bytes exceeds the limit of {limits.max_image_bytes}",
                    "image_too_large", param)
  try:
    return base64.b64decode(payload.strip(), validate=True)
  except (binascii.Error, ValueError):
    raise bad_request("image data is not valid base64", "invalid_base64", param) from None


def _local_file_bytes(url: str, limits: ServeSettings, param: str) -> bytes:
  if limits.image_dir is None:
    raise bad_request("local image files are disabled on this server (start it with --image-dir)",
                      "local_files_disabled", param)
  path = urllib.parse.unquote(urllib.parse.urlparse(url).path) if url.startswith("file:") else url
  root = os.path.realpath(limits.image_dir)
  real = os.path.realpath(os.path.join(root, path))  # a relative path is taken under the root
  if os.path.commonpath([root, real]) != root:
    raise bad_request("local image path is outside the allowed image folder", "path_not_allowed", param)
  if not os.path.isfile(real):
    raise bad_request(f"no such image file under the image folder: {os.path.relpath(real, root)}",
                      "image_not_found", param)
  size = os.path.getsize(real)
  if size > limits.max_image_bytes:
    raise too_large(f"image file of {size} bytes exceeds the limit of {limits.max_image_bytes}",
                    "image_too_large", param)
  with open(real, "rb") as f:
    return f.read()


def image_bytes(url: str, limits: ServeSettings, param: str = "image_url") -> bytes:
  if not isinstance(url, str) or not url:
    raise bad_request("image URL is empty", "invalid_image_url", param)
  scheme = url.split(":", 1)[0].lower() if ":" in url[:12] else ""
  if scheme == "data":
    return _data_url_bytes(url, limits, param)
  if scheme in ("http", "https"):
    raise bad_request("remote image URLs are not fetched; send the image as a data: URL", "remote_url", param)
  if scheme in ("file", ""):
    return _local_file_bytes(url, limits, param)
  raise bad_request(f"unsupported image URL scheme {scheme!r}; use data: or file:", "invalid_image_url", param)


def decode_image(data: bytes, limits: ServeSettings, param: str = "image_url") -> RequestImage:
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("error", Image.DecompressionBombWarning)
      img = Image.open(io.BytesIO(data))
      if img.format not in FORMATS:
        raise bad_request(f"unsupported image format {img.format}; send JPEG, PNG or WebP",
                          "unsupported_image_type", param)
      w, h = img.size
      if w * h > limits.max_image_pixels:
        raise too_large(f"image of {w}x{h} pixels exceeds the limit of {limits.max_image_pixels} pixels",
                        "image_too_large", param)
      img.load()
      pixels = to_rgb(img)
  except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning):
    raise bad_request("the data is not a readable JPEG, PNG or WebP image", "invalid_image", param) from None
  except (OSError, SyntaxError, ValueError, InputError) as e:  # truncated or corrupt files
    raise bad_request(f"the image cannot be decoded: {str(e).splitlines()[0] if str(e) else type(e).__name__}",
                      "invalid_image", param) from None
  digest = hashlib.sha256(f"{pixels.shape}".encode())
  digest.update(np.ascontiguousarray(pixels).data)
  return RequestImage(pixels, digest.hexdigest())


def load_image_url(url: str, limits: ServeSettings, param: str = "image_url") -> RequestImage:
  return decode_image(image_bytes(url, limits, param), limits, param)


def data_url(image, format: str = "PNG") -> str:
  """A PIL image or HWC uint8 array as a data: URL (clients, tests, benchmarks)."""
  if isinstance(image, np.ndarray):
    image = Image.fromarray(image)
  buf = io.BytesIO()
  image.save(buf, format=format)
  mime = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}[format.upper()]
  return f"data:{mime};base64," + base64.b64encode(buf.getvalue()).decode()
