"""A uvicorn server on a background thread of this process (tests, benchmarks, notebooks).

    with serve_in_thread(create_app(service)) as url:     # http://127.0.0.1:<free port>
      openai.OpenAI(base_url=url + "/v1", api_key="-").models.list()

The socket is bound before the thread starts (port 0 = any free port), so the URL is known at once
and no other process can take the port in between; leaving the block stops the server.
"""
import contextlib
import socket
import threading
import time

import uvicorn


@contextlib.contextmanager
def serve_in_thread(app, host: str = "127.0.0.1", port: int = 0, startup_timeout: float = 60.0):
  sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
  sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
  sock.bind((host, port))
  port = sock.getsockname()[1]
  server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2))
  thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="uvicorn", daemon=True)
  thread.start()
  t0 = time.monotonic()
  while not server.started:
    if not thread.is_alive() or time.monotonic() - t0 > startup_timeout:
      raise RuntimeError("the server did not start")
    time.sleep(0.01)
  try:
    yield f"http://{host}:{port}"
  finally:
    server.should_exit = True
    thread.join(10)
    sock.close()
