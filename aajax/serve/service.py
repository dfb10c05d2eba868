"""What a server serves: a Moondream model behind a batching engine, and optionally an AA model.

    service = Service.from_model_dir("models/md2", settings)      # or Service.demo(settings)
    app = create_app(service)                                     # aajax.serve.app

`Service` turns parsed requests into engine work: it picks the task (query / caption / detect /
point), builds the prompt ids with the model's templates, and checks the limits that depend on
the model (prompt length, context room). The demo model is a tiny random Moondream with a small
byte-level BPE tokenizer trained on the spot: it answers in nonsense, without any download.
"""
import os
import time
from typing import Optional

import jax
import numpy as np

from aajax.errors import CheckpointError
from aajax.serve.engine import Engine
from aajax.serve.errors import ApiError, bad_request
from aajax.serve.images import RequestImage
from aajax.serve.settings import ServeSettings
from aajax.vlm import generate as G
from aajax.vlm.moondream import Moondream
from aajax.vlm.tokenizer import MoondreamTokenizer

DEMO_MODEL_ID = "moondream-tiny-demo"
_DEMO_CORPUS = """A cat sits on a red mat near the window. Two dogs run across the green park.
What is in the image? Describe the picture in detail. How many birds are on the wire?
The quick brown fox jumps over the lazy dog. A scratch on the metal surface, a dent and a stain.
There is a person holding an umbrella in the rain. A bowl of fruit on a wooden table."""
_SPECIALS = ["<|endoftext|>"] + [f"<|md_reserved_{i}|>" for i in range(9)]


def demo_tokenizer(vocab_size: int):
  """A byte-level BPE (Moondream's special tokens at ids 0..9) trained on a few sentences."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=_SPECIALS, show_progress=False,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(_DEMO_CORPUS.split("\n") * 5, trainer)
  return tok


def demo_moondream(seed: int = 0, config: str = "tiny") -> Moondream:
  from aajax.vlm.config import get_config
  from aajax.vlm.random_init import random_params
  cfg = get_config(config)
  return Moondream(cfg, random_params(cfg, seed), MoondreamTokenizer(demo_tokenizer(cfg.text.vocab_size), cfg.tokenizer))


class Service:
  def __init__(self, md: Moondream, model_id: str, settings: ServeSettings, anomaly=None, engine=None):
    """engine: another object with the `Engine` interface (benchmarks serve a reference with it)."""
    if md.tokenizer is None:
      raise CheckpointError("the model directory has no tokenizer.json: a server needs one")
    self.md, self.model_id, self.settings, self.anomaly = md, model_id, settings, anomaly
    self.cfg, self.tokenizer = md.cfg, md.tokenizer
    self.engine = engine or Engine(md.fns, md.params, settings.max_batch, settings.context, settings.cache_bytes,
                                   settings.max_queue)
    self.started = time.time()
    self.ready = False

  @classmethod
  def from_model_dir(cls, path: str, settings: ServeSettings, model_id: Optional[str] = None,
                     dtype: Optional[str] = None, anomaly=None) -> "Service":
    md = Moondream.from_pretrained(path, dtype=dtype)
    return cls(md, model_id or os.path.basename(os.path.normpath(path)), settings, anomaly)

  @classmethod
  def demo(cls, settings: ServeSettings, anomaly=None) -> "Service":
    return cls(demo_moondream(), DEMO_MODEL_ID, settings, anomaly)

  # -- lifecycle ----------------------------------------------------------------------------------
  def warmup(self):
    """Compile the usual paths, then report ready."""
    crop = self.cfg.vision.crop_size
    pixels = np.random.default_rng(0).integers(0, 256, (crop, crop, 3), dtype=np.uint8)
    image = RequestImage(pixels, "warmup")
    self.engine.warmup(image, self.tokenizer.query_prompt("warm up"),
                       [self.cfg.tokenizer.bos_id] + self.tokenizer.query_prompt("warm up"))
    if self.anomaly is not None:
      self.engine.run_job(lambda: self.anomaly.score(pixels, None, None, False)).result()
    self.ready = True

  def close(self):
    self.ready = False
    self.engine.close()

  def model_ids(self) -> list:
    return [self.model_id] + ([self.anomaly.model_id] if self.anomaly is not None else [])

  def health(self) -> dict:
    devices = jax.devices()
    return {"status": "ok" if self.engine.alive else "engine stopped", "ready": self.ready,
            "model": self.model_id, "anomaly_model": self.anomaly.model_id if self.anomaly else None,
            "devices": {"count": len(devices), "platform": devices[0].platform, "kind": devices[0].device_kind},
            "uptime_s": round(time.time() - self.started, 3), **self.engine.stats()}

  # -- requests -> engine work --------------------------------------------------------------------
  def check_model(self, name: Optional[str], kind: str = "vlm"):
    """404 (as OpenAI answers an unknown model) unless `name` is None or this server's model."""
    if kind == "anomaly":
      if self.anomaly is None:
        raise ApiError(404, "this server has no anomaly model (start it with --anomaly-model)", "model_not_found",
                       "model")
      if name is not None and name != self.anomaly.model_id:
        raise ApiError(404, f"the model {name!r} does not exist; the anomaly model is {self.anomaly.model_id!r}",
                       "model_not_found", "model")
    elif name is not None and name != self.model_id:
      known = ", ".join(repr(m) for m in self.model_ids())
      raise ApiError(404, f"the model {name!r} does not exist; this server has {known}", "model_not_found", "model")

  def _question_ids(self, text: str) -> list:
    ids = self.tokenizer.encode(text)
    if len(ids) > self.settings.max_prompt_tokens:
      raise bad_request(f"the prompt has {len(ids)} tokens; the limit is {self.settings.max_prompt_tokens}",
                        "context_length_exceeded", "messages")
    return ids

  def text_prompt(self, task: str, text: str, has_image: bool, caption_length: str = "normal") -> list:
    """Prompt ids of a text task (query / caption) in the model's template."""
    tok = self.tokenizer
    if task == "caption":
      if not has_image:
        raise bad_request("a caption needs an image", "missing_image", "messages")
      prompt = tok.caption_prompt(caption_length)
    else:
      if not text.strip():
        raise bad_request("the question is empty: send text with the image, or task 'caption'", "empty_prompt",
                          "messages")
      self._question_ids(text)
      prompt = tok.query_prompt(text)
    if not has_image:
      prompt = [self.cfg.tokenizer.bos_id] + prompt
    room = self.engine.context - (self.cfg.prefix_len if has_image else 0) - len(prompt)
    if room < 1:
      raise bad_request(f"the prompt does not fit the context of {self.engine.context} tokens", "context_length_exceeded",
                        "messages")
    return prompt

  def object_prompt(self, task: str, obj: str) -> list:
    if not obj.strip():
      raise bad_request(f"name the object to {task}", "empty_prompt", "object")
    self._question_ids(obj)
    return self.tokenizer.object_prompt(task, obj)

  def max_tokens(self, asked: Optional[int]) -> int:
    cap = self.settings.max_tokens_cap
    if asked is None:
      return cap
    if asked > cap:
      raise bad_request(f"max_tokens {asked} exceeds this server's cap of {cap}", "max_tokens_too_large", "max_tokens")
    return asked

  def max_objects(self, asked: Optional[int]) -> int:
    cap = self.settings.max_objects_cap
    if asked is None:
      return min(cap, G.DEFAULT_MAX_OBJECTS)
    if asked > cap:
      raise bad_request(f"max_objects {asked} exceeds this server's cap of {cap}", "max_objects_too_large",
                        "max_objects")
    return asked
