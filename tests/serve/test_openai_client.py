"""The official `openai` client against the live server: models, chat with images (streaming and
not), caption / detect / point, logprobs, stop sequences, local files, anomaly scoring."""
import base64
import io
import json

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.serve.helpers import image, image_url


def ask(text, url=None, **kw):
  content = [{"type": "text", "text": text}]
  if url is not None:
    content.append({"type": "image_url", "image_url": {"url": url}})
  return {"messages": [{"role": "user", "content": content}], **kw}


def test_models_health_and_schema(live, client):
  ids = [m.id for m in client.models.list().data]
  assert ids == [live.service.model_id, live.service.anomaly.model_id]
  assert client.models.retrieve(ids[0]).id == ids[0]
  health = httpx.get(live.url + "/health").json()
  assert health["status"] == "ok" and health["ready"] and health["devices"]["count"] >= 1
  assert {"queue_depth", "image_cache", "uptime_s", "active_rows"} <= set(health)
  assert httpx.get(live.url + "/ready").status_code == 200
  paths = httpx.get(live.url + "/openapi.json").json()["paths"]
  assert {"/v1/chat/completions", "/v1/models", "/health", "/v1/detect", "/v1/anomaly"} <= set(paths)


def test_chat_matches_the_library_and_streams_the_same_text(live, client):
  model = live.service.model_id
  q = "what is in the image?"
  reply = client.chat.completions.create(model=model, **ask(q, image_url(1)), max_tokens=10, temperature=0)
  want = live.service.md.query(image(1), q, temperature=0.0, max_tokens=10)["answer"]
  assert reply.choices[0].message.content == want
  assert reply.choices[0].finish_reason in ("stop", "length")
  n_prompt = live.service.cfg.prefix_len + len(live.service.tokenizer.query_prompt(q))
  assert reply.usage.prompt_tokens == n_prompt and reply.usage.completion_tokens <= 10
  chunks = list(client.chat.completions.create(model=model, **ask(q, image_url(1)), max_tokens=10, temperature=0,
                                               stream=True, stream_options={"include_usage": True}))
  text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
  assert text == want
  assert chunks[0].choices[0].delta.role == "assistant"
  assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == reply.choices[0].finish_reason
  assert chunks[-1].usage.completion_tokens == reply.usage.completion_tokens
  assert chunks[-1].usage.prompt_tokens_details.cached_tokens == live.service.cfg.prefix_len  # the image was cached


def test_text_only_caption_detect_point(live, client):
  model = live.service.model_id
  text_only = client.chat.completions.create(model=model, **ask("describe the picture"), max_tokens=4, temperature=0)
  assert text_only.usage.prompt_tokens == 1 + len(live.service.tokenizer.query_prompt("describe the picture"))
  caption = client.chat.completions.create(model=model, **ask("", image_url(2)), max_tokens=4, temperature=0)
  want = live.service.md.caption(image(2), temperature=0.0, max_tokens=4)["caption"]
  assert caption.choices[0].message.content == want
  short = client.chat.completions.create(model=model, **ask("", image_url(2)), max_tokens=4,
                                         extra_body={"task": "caption", "caption_length": "short"})
  assert short.choices[0].finish_reason in ("stop", "length")
  det = client.chat.completions.create(model=model, **ask("cat", image_url(3)), extra_body={"task": "detect", "max_objects": 2})
  boxes = json.loads(det.choices[0].message.content)["objects"]
  assert len(boxes) <= 2 and all(set(b) == {"x_min", "y_min", "x_max", "y_max"} for b in boxes)
  direct = httpx.post(live.url + "/v1/detect", json={"image_url": image_url(3), "object": "cat", "max_objects": 2}, timeout=60).json()
  assert direct["objects"] == boxes
  pts = httpx.post(live.url + "/v1/point", json={"image_url": {"url": image_url(3)}, "object": "dog", "max_objects": 3}, timeout=60)
  assert pts.status_code == 200 and all(set(p) == {"x", "y"} for p in pts.json()["points"])
  assert pts.json()["points"] == live.service.md.point(image(3), "dog", max_objects=3)["points"]


def test_logprobs_stop_and_seed(live, client):
  model = live.service.model_id
  base = dict(model=model, **ask("how many birds are there", image_url(4)), max_tokens=12, temperature=0)
  full = client.chat.completions.create(logprobs=True, top_logprobs=3, **base)
  entries = full.choices[0].logprobs.content
  assert len(entries) == full.usage.completion_tokens
  for e in entries:
    assert e.logprob <= 0 and len(e.top_logprobs) == 3
    assert e.top_logprobs[0].logprob >= e.logprob - 1e-5  # greedy: the chosen token is the most likely
  text = full.choices[0].message.content
  if len(text) >= 4:  # stop on a piece of the greedy answer: the answer ends just before it
    stop = text[2:4]
    cut = client.chat.completions.create(stop=[stop], **base)
    assert cut.choices[0].message.content == text[:text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
  sampled = dict(model=model, **ask("describe the picture", image_url(4)), max_tokens=8, temperature=1.0, top_p=0.9)
  a = client.chat.completions.create(seed=7, **sampled).choices[0].message.content
  assert client.chat.completions.create(seed=7, **sampled).choices[0].message.content == a


def test_local_file_under_the_image_folder(live, client):
  model = live.service.model_id
  ok = client.chat.completions.create(model=model, **ask("what is in the image?", f"file://{live.image_dir}/cat.png"),
                                      max_tokens=3, temperature=0)
  rel = client.chat.completions.create(model=model, **ask("what is in the image?", "cat.png"), max_tokens=3,
                                       temperature=0)
  assert ok.choices[0].message.content == rel.choices[0].message.content
  assert ok.choices[0].message.content == live.service.md.query(image(11), "what is in the image?", temperature=0.0,
                                                                 max_tokens=3)["answer"]


def test_anomaly_scoring(live):
  aa = live.service.anomaly
  r = httpx.post(live.url + "/v1/anomaly", json={"image_url": image_url(5), "class_name": "brick", "threshold": 0.5}, timeout=60)
  assert r.status_code == 200, r.text
  body = r.json()
  assert 0 <= body["image_score"] <= 1 and 0 <= body["max_pixel_score"] <= 1
  assert body["anomalous"] == (body["image_score"] > 0.5)
  strip = Image.open(io.BytesIO(base64.b64decode(body["heatmap_png_base64"])))
  assert strip.format == "PNG" and strip.size == (3 * aa.size, aa.size)
  want = aa.score(image(5), "brick", 0.5, False)
  np.testing.assert_allclose(body["image_score"], want["image_score"], rtol=1e-6)
  other = httpx.post(live.url + "/v1/anomaly", json={"image_url": image_url(5), "class_name": "scratched widget",
                                                     "heatmap": False, "model": aa.model_id}, timeout=60).json()
  assert "heatmap_png_base64" not in other and other["class_name"] == "scratched widget"


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP"])
def test_jpeg_and_webp(live, client, fmt):
  r = client.chat.completions.create(model=live.service.model_id, **ask("what is in the image?", image_url(6, format=fmt)),
                                     max_tokens=2, temperature=0)
  assert r.choices[0].finish_reason in ("stop", "length")


def test_n_choices_are_the_seeds_in_turn(live, client):
  """n=3 with seed s answers what three requests with seeds s, s+1, s+2 answer, streamed or not,
  decoded side by side; usage counts the prompt once and every choice's tokens."""
  sampled = dict(model=live.service.model_id, **ask("describe the picture", image_url(6)), max_tokens=6,
                 temperature=1.0, top_p=0.95)
  singles = [client.chat.completions.create(seed=11 + i, **sampled) for i in range(3)]
  many = client.chat.completions.create(seed=11, n=3, **sampled)
  assert [c.index for c in many.choices] == [0, 1, 2]
  assert [c.message.content for c in many.choices] == [s.choices[0].message.content for s in singles]
  assert [c.finish_reason for c in many.choices] == [s.choices[0].finish_reason for s in singles]
  assert many.usage.prompt_tokens == singles[0].usage.prompt_tokens
  assert many.usage.completion_tokens == sum(s.usage.completion_tokens for s in singles)
  texts, finished = ["", "", ""], [None, None, None]
  for chunk in client.chat.completions.create(seed=11, n=3, stream=True, **sampled):
    for c in chunk.choices:
      texts[c.index] += c.delta.content or ""
      finished[c.index] = c.finish_reason or finished[c.index]
  assert texts == [c.message.content for c in many.choices]
  assert finished == [c.finish_reason for c in many.choices]
