"""What a server accepts and how it batches: one frozen dataclass, filled from the command line."""
import dataclasses
from typing import Optional


@dataclasses.dataclass(frozen=True)
class ServeSettings:
  # -- what a client may send -----------------------------------------------------------------
  max_body_bytes: int = 20 * 2 ** 20       # whole request body (base64 images included)
  max_image_bytes: int = 15 * 2 ** 20      # one encoded image file
  max_image_pixels: int = 40_000_000       # width * height, checked before decoding
  max_images: int = 1                      # Moondream answers about one image per request
  max_prompt_tokens: int = 512             # question text after tokenization
  max_tokens_cap: int = 512                # largest max_tokens accepted (also the default)
  max_stop_sequences: int = 4
  max_n: int = 8                           # choices per chat completion (each takes a batch row)
  max_objects_cap: int = 50                # detect / point
  request_timeout_s: float = 120.0         # from arrival to the last token
  image_dir: Optional[str] = None          # local image files are read only under this folder
  # -- batching -------------------------------------------------------------------------------
  max_batch: int = 16                      # rows decoded together; 1 turns batching off
  context: Optional[int] = None            # KV slots per row (default: the model's max_context)
  max_queue: int = 256                     # waiting requests beyond this get 429
  # -- image cache ----------------------------------------------------------------------------
  cache_bytes: int = 512 * 2 ** 20         # encoded-image (prefix KV) cache; 0 disables it

  def replace(self, **kw) -> "ServeSettings":
    return dataclasses.replace(self, **kw)
