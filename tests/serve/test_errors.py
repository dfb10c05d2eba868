"""Malformed and oversized requests: a clear 4xx with an OpenAI-style error body, never a 500, and
the server keeps serving afterwards."""
import base64

import httpx
import pytest
from PIL import Image

from aajax.serve.images import data_url
from tests.serve.helpers import image_url

MODEL = "moondream-tiny-demo"


def chat(*parts, **kw):
  content = [{"type": "text", "text": "what is in the image?"}] + list(parts)
  return {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 2, **kw}


def img(url):
  return {"type": "image_url", "image_url": {"url": url}}


B64_TEXT = "data:image/png;base64," + base64.b64encode(b"this is not an image at all").decode()
BIG_SOLID = data_url(Image.new("RGB", (1100, 1000), (10, 20, 30)))  # 1.1 Mpx, a few kB as PNG
GIF = "data:image/gif;base64," + base64.b64encode(b"GIF89a").decode()

CASES = [
    # (name, kwargs for httpx.post, status, error code)
    ("malformed json", dict(content=b'{"model": "x", "messages": [', headers={"content-type": "application/json"}),
     400, "invalid_json"),
    ("json without content type", dict(content=b"{not json"), 400, "invalid_json"),
    ("form content type", dict(content=b"a=b", headers={"content-type": "application/x-www-form-urlencoded"}), 415,
     "unsupported_media_type"),
    ("missing messages", dict(json={"model": MODEL}), 422, "invalid_request_body"),
    ("empty messages", dict(json={"model": MODEL, "messages": []}), 422, "invalid_request_body"),
    ("missing model", dict(json={"messages": [{"role": "user", "content": "hi"}]}), 422, "invalid_request_body"),
    ("wrong type", dict(json=chat(temperature="hot")), 422, "invalid_request_body"),
    ("top_p zero", dict(json=chat(top_p=0)), 422, "invalid_request_body"),
    ("unknown role", dict(json={"model": MODEL, "messages": [{"role": "robot", "content": "hi"}]}), 422,
     "invalid_request_body"),
    ("unknown content part", dict(json=chat({"type": "input_audio", "input_audio": {}})), 422, "invalid_request_body"),
    ("unknown model", dict(json={**chat(), "model": "gpt-4o"}), 404, "model_not_found"),
    ("no user message", dict(json={"model": MODEL, "messages": [{"role": "system", "content": "be brief"}]}), 400,
     "missing_user_message"),
    ("empty question, no image", dict(json={"model": MODEL, "messages": [{"role": "user", "content": " "}]}), 400,
     "empty_prompt"),
    ("bad base64", dict(json=chat(img("data:image/png;base64,@@@not-base64@@@"))), 400, "invalid_base64"),
    ("not an image", dict(json=chat(img(B64_TEXT))), 400, "invalid_image"),
    ("unsupported image type", dict(json=chat(img(GIF))), 400, "unsupported_image_type"),
    ("data url not base64", dict(json=chat(img("data:image/png,rawbytes"))), 400, "invalid_image_url"),
    ("remote url", dict(json=chat(img("https://example.com/cat.png"))), 400, "remote_url"),
    ("path outside the image folder", dict(json=chat(img("file:///etc/passwd"))), 400, "path_not_allowed"),
    ("dot-dot escape", dict(json=chat(img("../../etc/hostname"))), 400, "path_not_allowed"),
    ("absolute path elsewhere", dict(json=chat(img("file:///nowhere.png"))), 400, "path_not_allowed"),
    ("missing local file", dict(json=chat(img("file:dog.png"))), 400, "image_not_found"),
    ("too many images", dict(json=chat(img(image_url(0)), img(image_url(1)))), 400, "too_many_images"),
    ("too many pixels", dict(json=chat(img(BIG_SOLID))), 413, "image_too_large"),
    ("body too large", dict(json=chat(img("data:image/png;base64," + "A" * (2 ** 20 + 10)))), 413,
     "request_too_large"),
    ("prompt too long", dict(json={"model": MODEL, "messages": [{"role": "user", "content": "cat " * 200}]}), 400,
     "context_length_exceeded"),
    ("max_tokens over the cap", dict(json=chat(max_tokens=10_000)), 400, "max_tokens_too_large"),
    ("negative max_tokens", dict(json=chat(max_tokens=-1)), 422, "invalid_request_body"),
    ("n over the cap", dict(json=chat(n=9)), 400, "unsupported_parameter"),
    ("n > 1 for detect", dict(json=chat(img(data_url(Image.new("RGB", (8, 8)))), n=2, task="detect")), 400,
     "unsupported_parameter"),
    ("too many stops", dict(json=chat(stop=["a", "b", "c", "d", "e"])), 400, "too_many_stop_sequences"),
    ("top_logprobs without logprobs", dict(json=chat(top_logprobs=2)), 400, "invalid_parameter"),
    ("detect without image", dict(json={**chat(), "task": "detect"}), 400, "missing_image"),
    ("unknown task", dict(json={**chat(), "task": "dance"}), 422, "invalid_request_body"),
]


@pytest.mark.parametrize("name,kwargs,status,code", CASES, ids=[c[0] for c in CASES])
def test_bad_chat_request(live, name, kwargs, status, code):
  r = httpx.post(live.url + "/v1/chat/completions", timeout=30, **kwargs)
  assert r.status_code == status, r.text
  err = r.json()["error"]
  assert err["code"] == code and err["message"] and err["type"]


@pytest.mark.parametrize("route,body,status,code", [
    ("/v1/detect", {"image_url": "data:image/png;base64,xx"}, 422, "invalid_request_body"),
    ("/v1/detect", {"image_url": B64_TEXT, "object": "cat"}, 400, "invalid_image"),
    ("/v1/point", {"image_url": image_url(0), "object": "cat", "max_objects": 999}, 400, "max_objects_too_large"),
    ("/v1/point", {"image_url": image_url(0), "object": "   "}, 400, "empty_prompt"),
    ("/v1/anomaly", {"image_url": image_url(0), "threshold": 2}, 422, "invalid_request_body"),
    ("/v1/anomaly", {"image_url": image_url(0), "model": "other"}, 404, "model_not_found"),
    ("/v1/nothing", {}, 404, "not_found"),
])
def test_bad_route_request(live, route, body, status, code):
  r = httpx.post(live.url + route, json=body, timeout=30)
  assert r.status_code == status, r.text
  assert r.json()["error"]["code"] == code


def test_server_survives_and_counts_no_engine_errors(live, client):
  before = live.engine.stats()["engine_errors"]
  for name, kwargs, _, _ in CASES:
    httpx.post(live.url + "/v1/chat/completions", timeout=30, **kwargs)
  r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "describe the picture"}],
                                     max_tokens=2)
  assert r.choices[0].finish_reason in ("stop", "length")
  health = httpx.get(live.url + "/health").json()
  assert health["status"] == "ok" and health["engine_errors"] == before
