"""The image cache: a repeated image (same pixels, any container) skips the vision encoder and the
image prefill; the LRU stays within its byte bound."""
import io

from PIL import Image

from aajax.serve.cache import ByteLRU
from aajax.serve.images import data_url
from tests.serve.helpers import image


def test_repeated_image_does_not_run_the_vision_encoder(live, client):
  fns, model = live.service.md.fns, live.service.model_id
  crops_seen = []
  encode = fns.encode_crops
  fns.encode_crops = lambda p, x: (crops_seen.append(x.shape[0]), encode(p, x))[1]
  try:
    pixels = image(40, (50, 70))
    png = data_url(pixels)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", optimize=True, compress_level=9)  # other bytes, same pixels
    import base64
    png2 = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    assert png2 != png
    stats0 = live.engine.stats()["image_cache"]

    def ask(url, q):
      return client.chat.completions.create(model=model, max_tokens=3, temperature=0, messages=[
          {"role": "user", "content": [{"type": "text", "text": q}, {"type": "image_url", "image_url": {"url": url}}]}])
    first = ask(png, "what is in the image?")
    assert len(crops_seen) == 1 and first.usage.prompt_tokens_details.cached_tokens == 0
    again = ask(png2, "describe the picture")
    assert len(crops_seen) == 1  # no vision run: the encoded image and its prefill KV came from the cache
    assert again.usage.prompt_tokens_details.cached_tokens == live.service.cfg.prefix_len
    assert ask(png, "what is in the image?").choices[0].message.content == first.choices[0].message.content
    ask(data_url(image(41, (50, 70))), "describe the picture")
    assert len(crops_seen) == 2  # a new image is encoded
    stats = live.engine.stats()["image_cache"]
    assert stats["hits"] - stats0["hits"] == 2 and stats["misses"] - stats0["misses"] == 2
  finally:
    fns.encode_crops = encode


def test_lru_is_bounded_in_bytes_and_evicts_the_oldest():
  lru = ByteLRU(100, size_of=len)
  assert lru.put("a", b"x" * 40) and lru.put("b", b"y" * 40)
  assert lru.get("a") == b"x" * 40  # a is now the most recent
  lru.put("c", b"z" * 40)  # evicts b
  assert "b" not in lru and "a" in lru and "c" in lru and lru.bytes == 80
  assert not lru.put("huge", b"h" * 101) and "huge" not in lru
  s = lru.stats()
  assert (s["hits"], s["misses"], s["evictions"], s["entries"]) == (1, 0, 1, 2)
  assert ByteLRU(0, len).put("a", b"x") is False  # a zero-byte cache keeps nothing
