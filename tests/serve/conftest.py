"""One live server for the session: the demo Moondream plus a tiny AA model, on a loopback port
in a background thread of the test process (so tests can also look at its engine)."""
import dataclasses

import pytest

from tests.serve.helpers import write_image, write_tiny_aa


@dataclasses.dataclass
class Live:
  url: str
  service: object
  image_dir: str

  @property
  def engine(self):
    return self.service.engine


@pytest.fixture(scope="session")
def live(tmp_path_factory):
  from aajax.serve.anomaly import AnomalyScorer
  from aajax.serve.app import create_app
  from aajax.serve.live import serve_in_thread
  from aajax.serve.service import Service
  from aajax.serve.settings import ServeSettings
  image_dir = tmp_path_factory.mktemp("images")
  write_image(image_dir / "cat.png", seed=11)
  aa = write_tiny_aa(str(tmp_path_factory.mktemp("aa") / "model"))
  settings = ServeSettings(max_body_bytes=2 ** 20, max_image_bytes=2 ** 20, max_image_pixels=1_000_000,
                           max_prompt_tokens=64, max_tokens_cap=64, image_dir=str(image_dir), max_batch=4,
                           request_timeout_s=60)
  service = Service.demo(settings, anomaly=AnomalyScorer(aa))
  service.warmup()
  with serve_in_thread(create_app(service)) as url:
    yield Live(url, service, str(image_dir))
  service.close()


@pytest.fixture(scope="session")
def client(live):
  import openai
  return openai.OpenAI(base_url=live.url + "/v1", api_key="unused", max_retries=0, timeout=60)
