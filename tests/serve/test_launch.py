"""python -m launch.serve --demo as a user starts it: /health at once, /ready after warm-up, a chat
completion through the openai client, a clean stop on SIGINT; a bad model dir exits with a message."""
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import openai
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.e2e
def test_demo_server_starts_answers_and_stops(tmp_path):
  port = free_port()
  env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": os.path.join(ROOT, ".pytest_cache", "jax"),
         "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.5", "PYTHONPATH": ROOT}
  proc = subprocess.Popen([sys.executable, "-m", "launch.serve", "--demo", "--port", str(port), "--max-tokens", "8", "--max-batch", "2",
                           "--log-level", "warning"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  url = f"http://127.0.0.1:{port}"
  try:
    t0 = time.monotonic()
    while True:
      assert proc.poll() is None, proc.stdout.read()
      try:
        if httpx.get(url + "/ready", timeout=2).status_code == 200:
          break
      except httpx.TransportError:
        pass
      assert time.monotonic() - t0 < 240, "server not ready"
      time.sleep(0.2)
    assert httpx.get(url + "/health").json()["ready"]
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    model = client.models.list().data[0].id
    reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "describe the picture"}])
    assert reply.usage.completion_tokens <= 8
  finally:
    proc.send_signal(signal.SIGINT)
    try:
      out, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
      proc.kill()
      out, _ = proc.communicate()
  assert proc.returncode == 0, out


def test_missing_model_dir_is_a_one_line_error(tmp_path):
  r = subprocess.run([sys.executable, "-m", "launch.serve", "--model", str(tmp_path / "nope"), "--no-warmup"],
                     cwd=ROOT, capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": ROOT})
  assert r.returncode == 2 and "model directory not found" in r.stderr and "Traceback" not in r.stderr
