"""Concurrent requests share decode steps and get what they would get alone; a client that goes away
frees its row; timeouts; /health answers while the engine is busy."""
import concurrent.futures
import threading
import time

import httpx
import numpy as np

from tests.serve.helpers import image_url

QUESTIONS = ["what is in the image?", "describe the picture", "how many birds are there", "red green blue"]


def body(live, i, **kw):
  content = [{"type": "text", "text": QUESTIONS[i % 4]}, {"type": "image_url", "image_url": {"url": image_url(20 + i)}}]
  return {"model": live.service.model_id, "messages": [{"role": "user", "content": content}], "max_tokens": 16,
          "seed": i, "temperature": 0.0 if i % 2 else 1.0, "logprobs": True, **kw}


def wait_for(cond, timeout=20.0):
  t0 = time.monotonic()
  while not cond():
    assert time.monotonic() - t0 < timeout, "condition not reached"
    time.sleep(0.02)


def block_engine(live):
  """Hold the engine thread in a job until the returned event is set (the device 'busy')."""
  release, started = threading.Event(), threading.Event()
  live.engine.run_job(lambda: (started.set(), release.wait(30)))
  started.wait(10)
  return release


def test_concurrent_requests_share_steps_and_match_single_runs(live, client):
  bodies = [body(live, i) for i in range(live.engine.max_batch)]
  alone = [client.chat.completions.create(**b) for b in bodies]
  before = live.engine.stats()
  release = block_engine(live)  # let the whole burst queue up, so it is admitted together
  with concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
    futures = [pool.submit(client.chat.completions.create, **b) for b in bodies]
    wait_for(lambda: live.engine.queue_depth() >= len(bodies))
    release.set()
    together = [f.result() for f in futures]
  after = live.engine.stats()
  steps = after["decode_steps"] - before["decode_steps"]
  rows = after["batched_rows"] - before["batched_rows"]
  assert rows / steps > live.engine.max_batch / 2, (rows, steps)  # the requests decoded side by side
  for a, t in zip(alone, together):
    assert a.choices[0].message.content == t.choices[0].message.content
    assert a.usage.completion_tokens == t.usage.completion_tokens
    np.testing.assert_allclose([e.logprob for e in a.choices[0].logprobs.content],
                               [e.logprob for e in t.choices[0].logprobs.content], atol=1e-4)


def test_disconnect_mid_stream_frees_the_row(live):
  before = live.engine.stats()["cancelled"]
  settings = live.service.settings
  live.service.settings = settings.replace(max_tokens_cap=180)
  try:
    with httpx.stream("POST", live.url + "/v1/chat/completions", timeout=30,
                      json=body(live, 1, max_tokens=180, stream=True, temperature=1.0, logprobs=False)) as r:
      lines = r.iter_lines()
      while not next(lines).startswith("data: {"):
        pass
      release = block_engine(live)  # the row must still be there when the client leaves
    # leaving the block closed the connection: the server cancels the request, then its row is freed
    wait_for(lambda: any(s is not None and s.req.cancelled for s in list(live.engine._slots)))
    release.set()
    wait_for(lambda: live.engine.active_rows() == 0)
    assert live.engine.stats()["cancelled"] == before + 1
  finally:
    live.service.settings = settings


def test_timeout_gives_504_and_health_answers_while_busy(live):
  settings = live.service.settings
  live.service.settings = settings.replace(request_timeout_s=0.3)
  try:
    release = block_engine(live)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
      pending = pool.submit(httpx.post, live.url + "/v1/chat/completions", json=body(live, 2), timeout=30)
      wait_for(lambda: live.engine.queue_depth() >= 1)
      health = httpx.get(live.url + "/health", timeout=5)  # the engine is busy; /health is not
      assert health.status_code == 200 and health.json()["queue_depth"] >= 1
      time.sleep(0.4)
      release.set()
      r = pending.result()
    assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
  finally:
    live.service.settings = settings
  wait_for(lambda: live.engine.active_rows() == 0 and live.engine.queue_depth() == 0)


def test_full_queue_is_429(live):
  limit = live.engine.max_queue
  live.engine.max_queue = 0
  try:
    r = httpx.post(live.url + "/v1/chat/completions", json=body(live, 3), timeout=30)
  finally:
    live.engine.max_queue = limit
  assert r.status_code == 429 and r.json()["error"]["code"] == "queue_full" and r.headers["retry-after"]


def test_a_failing_device_step_fails_its_requests_not_the_server(live, client):
  programs, errors = live.engine.programs, live.engine.stats()["engine_errors"]
  step = programs.step

  def broken(*args, **kw):
    raise RuntimeError("device lost")
  programs.step = broken
  try:
    r = httpx.post(live.url + "/v1/chat/completions", json=body(live, 5, max_tokens=4), timeout=30)
  finally:
    programs.step = step
  assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error"
  assert live.engine.alive and live.engine.stats()["engine_errors"] == errors + 1
  again = client.chat.completions.create(**body(live, 5, max_tokens=4))
  assert again.choices[0].finish_reason in ("stop", "length")
