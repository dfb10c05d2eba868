"""Continuous (step-level) batching of Moondream generation on one worker thread.

Requests arrive from any thread (`submit`) and are answered through their `on_event` callback:
`Token` per generated token, then `Finished`, or `Failed`. The worker owns the model and a
running batch: a KV cache of W rows (W a power of two up to `max_batch`) with S slots each. Each
turn of its loop it
  1. admits waiting requests into free rows: their images come from the image cache or are encoded
     together (vision tower + BOS/image prefill), their prompts are prefilled together, and the
     first token is sampled from the prefill logits;
  2. runs queued jobs (detect / point batches, anomaly scoring) between decode steps;
  3. runs one decode step for every active row and hands each row its token.
Rows finish at eos, max_tokens, the end of their slots, a cancel or a deadline, and their row is
free for the next request at once; so concurrent requests share decode steps, and a new request
waits at most one step (plus its own prefill) to join. W grows and shrinks in powers of two, so
the decoder compiles once per W. `max_batch=1` is the unbatched baseline.

Per-row sampling streams (see `rows.sample_rows`) make results independent of batching.
"""
import concurrent.futures
import dataclasses
import logging
import math
import queue
import threading
import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from aajax.decoder import kv_cache as kvc
from aajax.errors import InputError
from aajax.serve import rows as R
from aajax.serve.cache import ByteLRU
from aajax.serve.images import RequestImage
from aajax.vlm import generate as G
from aajax.vlm.runtime import EncodedImage, MoondreamFns, encode_image

log = logging.getLogger("aajax.serve")
PROMPT_BUCKET = 16       # prompts are right padded to 16, 32, 64, ... tokens: few prefill shapes
WARM_PROMPT_BUCKETS = (16, 32)


def prompt_bucket(length: int) -> int:
  return max(PROMPT_BUCKET, R.next_power_of_two(length))


class Overloaded(Exception):
  """The waiting queue is full."""


class RequestTimeout(Exception):
  """The request's deadline passed before it finished."""


class ShuttingDown(Exception):
  """The engine stopped before the request finished."""


@dataclasses.dataclass
class Token:
  id: int
  logprob: float
  top: Optional[list]  # [(id, logprob)] when top_logprobs was asked


@dataclasses.dataclass
class Finished:
  reason: str              # "stop" (eos) | "length" (max_tokens or the end of the context) | "cancelled"
  prompt_tokens: int       # image prefix + prompt
  completion_tokens: int
  cached_tokens: int       # prompt tokens read from the image cache


@dataclasses.dataclass
class Failed:
  error: Exception


@dataclasses.dataclass
class GenerationRequest:
  prompt: list                       # token ids (text-only prompts start with bos)
  image: Optional[RequestImage]
  on_event: Callable
  max_tokens: int = 256
  temperature: float = 0.0
  top_p: float = 1.0
  seed: int = 0
  top_logprobs: int = 0
  deadline: float = math.inf         # time.monotonic() value
  cancelled: bool = False
  arrived: float = dataclasses.field(default_factory=time.monotonic)

  def cancel(self):
    """Free the request's row at the next step (any thread)."""
    self.cancelled = True


@dataclasses.dataclass
class PointsRequest:
  """detect (boxes) or point; answered through `future` with a list of dicts."""
  image: RequestImage
  prompt: list
  with_size: bool
  max_objects: int
  future: concurrent.futures.Future = dataclasses.field(default_factory=concurrent.futures.Future)
  deadline: float = math.inf


def run_job_into(fn: Callable, fut: concurrent.futures.Future) -> None:
  """fn()'s result or exception into fut, unless the caller cancelled it first."""
  if not fut.set_running_or_notify_cancel():
    return
  try:
    fut.set_result(fn())
  except Exception as e:  # noqa: BLE001 - the job's caller gets the error
    fut.set_exception(e)


@dataclasses.dataclass
class _Row:
  req: GenerationRequest
  budget: int
  prompt_tokens: int
  cached_tokens: int
  emitted: int = 0
  token: int = 0         # last sampled token: fed at the next decode step


def _encoded_bytes(enc: EncodedImage) -> int:
  return sum(a.nbytes for a in jax.tree.leaves(enc.cache))


class Engine:
  def __init__(self, fns: MoondreamFns, params, max_batch: int = 16, context: Optional[int] = None,
               cache_bytes: int = 512 * 2 ** 20, max_queue: int = 256):
    cfg = fns.cfg
    self.fns, self.params, self.cfg = fns, params, cfg
    self.max_batch = max(1, int(max_batch))
    self.context = int(context or cfg.text.max_context)
    if not cfg.prefix_len < self.context <= cfg.text.max_context:
      raise InputError(f"context {self.context} must be above the image prefix ({cfg.prefix_len}) and at most "
                       f"the model's max_context ({cfg.text.max_context})")
    self.max_queue = max_queue
    self.eos = cfg.tokenizer.eos_id
    self.banned = tuple(i for i in (cfg.tokenizer.answer_id,) if i is not None)
    self.image_cache = ByteLRU(cache_bytes, _encoded_bytes)
    self.programs = R.EnginePrograms(fns, self.context)
    t = cfg.text
    self._empty_prefix = kvc.init_cache(t.n_layers, 1, cfg.prefix_len, t.n_kv_heads, t.head_dim, jnp.dtype(t.dtype))
    self._inbox: "queue.Queue" = queue.Queue()
    self._waiting: list = []          # taken from the inbox, not yet admitted (no free row)
    self._points: list = []
    self._jobs: "queue.Queue" = queue.Queue()
    self._slots: list = []            # W entries: _Row or None
    self._cache = None                # running KV cache [W, S, ...]
    self._wake = threading.Event()
    self._stop = threading.Event()
    self.counters = {"requests": 0, "finished": 0, "failed": 0, "cancelled": 0, "timed_out": 0,
                     "decode_steps": 0, "generated_tokens": 0, "prefill_calls": 0, "vision_images": 0,
                     "vision_seconds": 0.0, "batched_rows": 0, "engine_errors": 0}
    self.started = time.time()
    self._thread = threading.Thread(target=self._loop, name="aajax-serve-engine", daemon=True)
    self._thread.start()

  # -- any thread ---------------------------------------------------------------------------------
  @property
  def alive(self) -> bool:
    return self._thread.is_alive() and not self._stop.is_set()

  def queue_depth(self) -> int:
    return self._inbox.qsize() + len(self._waiting) + len(self._points) + self._jobs.qsize()

  def active_rows(self) -> int:
    return sum(s is not None for s in list(self._slots))

  def submit(self, req: GenerationRequest) -> GenerationRequest:
    if not self.alive:
      raise ShuttingDown("the server is shutting down")
    if self.queue_depth() >= self.max_queue:
      raise Overloaded(f"{self.queue_depth()} requests are waiting; try again shortly")
    base = 0 if req.image is None else self.cfg.prefix_len
    if not req.prompt:
      raise InputError("empty prompt")
    if base + len(req.prompt) >= self.context:
      raise InputError(f"prompt of {len(req.prompt)} tokens does not fit the context of {self.context} "
                       f"({base} taken by the image)")
    self.counters["requests"] += 1
    self._inbox.put(req)
    self._wake.set()
    return req

  def submit_points(self, req: PointsRequest) -> concurrent.futures.Future:
    if not self.alive:
      raise ShuttingDown("the server is shutting down")
    if self.queue_depth() >= self.max_queue:
      raise Overloaded(f"{self.queue_depth()} requests are waiting; try again shortly")
    self.counters["requests"] += 1
    self._inbox.put(req)
    self._wake.set()
    return req.future

  def run_job(self, fn: Callable) -> concurrent.futures.Future:
    """Run fn() on the engine thread between decode steps (the device is used by one thread)."""
    if not self.alive:
      raise ShuttingDown("the server is shutting down")
    fut = concurrent.futures.Future()
    self._jobs.put((fn, fut))
    self._wake.set()
    return fut

  def stats(self) -> dict:
    return {"active_rows": self.active_rows(), "batch_rows": len(self._slots), "max_batch": self.max_batch,
            "context": self.context, "queue_depth": self.queue_depth(), **self.counters,
            "image_cache": self.image_cache.stats()}

  def close(self, timeout: float = 10.0):
    self._stop.set()
    self._wake.set()
    self._thread.join(timeout)

  # -- engine thread ------------------------------------------------------------------------------
  def _loop(self):
    try:
      while not self._stop.is_set():
        if not self._slots_busy() and not self._pending():
          self._wake.wait(0.5)
          self._wake.clear()
          continue
        self._guarded(self._admit)
        self._guarded(self._run_points)
        self._guarded(self._run_jobs)
        if self._slots_busy():
          self._guarded(self._step, on_error=self._fail_all_rows)
    finally:
      self._shutdown()

  def _guarded(self, fn, on_error=None):
    """A failure (a device error, a bug) fails the requests involved, never the worker."""
    try:
      fn()
    except Exception as e:  # noqa: BLE001 - the worker must survive anything
      self.counters["engine_errors"] += 1
      log.exception("engine error in %s", fn.__name__)
      if on_error is not None:
        on_error(e)

  def _pending(self) -> bool:
    return bool(self._waiting or self._points or not self._inbox.empty() or not self._jobs.empty())

  def _slots_busy(self) -> bool:
    return any(s is not None for s in self._slots)

  @staticmethod
  def _emit(req, event):
    try:
      req.on_event(event)
    except Exception:  # noqa: BLE001 - a consumer gone away (closed event loop) must not stop the engine
      log.debug("event consumer failed", exc_info=True)

  def _fail(self, req, error: Exception):
    self.counters["timed_out" if isinstance(error, RequestTimeout) else "failed"] += 1
    if isinstance(req, PointsRequest):
      if not req.future.done():
        req.future.set_exception(error)
    else:
      self._emit(req, Failed(error))

  def _drain_inbox(self):
    while True:
      try:
        req = self._inbox.get_nowait()
      except queue.Empty:
        return
      (self._points if isinstance(req, PointsRequest) else self._waiting).append(req)

  # -- admission ----------------------------------------------------------------------------------
  def _encoded(self, images: list) -> tuple[list, list]:
    """EncodedImage rows (batch 1) for the given images, and whether each was a cache hit.
    Misses are encoded together, in power-of-two groups (one compiled shape per group size)."""
    found, hit, missing = {}, [], {}
    for img in images:
      enc = found.get(img.key) or self.image_cache.get(img.key)
      hit.append(enc is not None)
      if enc is not None:
        found[img.key] = enc
      elif img.key not in missing:
        missing[img.key] = img
    todo = list(missing.values())
    start = 0
    for n in R.power_of_two_parts(len(todo)):
      group = todo[start:start + n]
      start += n
      t0 = time.perf_counter()
      enc = encode_image(self.fns, self.params, [g.pixels for g in group])
      jax.block_until_ready(enc.cache)
      self.counters["vision_seconds"] += time.perf_counter() - t0
      self.counters["vision_images"] += n
      for i, g in enumerate(group):
        row = enc if n == 1 else enc.rows([i])
        found[g.key] = row
        self.image_cache.put(g.key, row)
    return [found[img.key] for img in images], hit

  def _resize_batch(self, width: int, keep: list):
    """New running batch of `width` rows holding the rows `keep` (old indices) first, in order."""
    index = np.full((width,), max(1, len(self._slots)), np.int32)  # past the end: zero rows
    index[:len(keep)] = keep
    if self._cache is None:
      t = self.cfg.text
      self._cache = kvc.init_cache(t.n_layers, width, self.context, t.n_kv_heads, t.head_dim, jnp.dtype(t.dtype))
    else:
      self._cache = self.programs.take_rows(self._cache, jnp.asarray(index))
    self._slots = [self._slots[i] for i in keep] + [None] * (width - len(keep))

  def _admit(self):
    self._drain_inbox()
    now = time.monotonic()
    for req in [r for r in self._waiting if r.cancelled or r.deadline <= now]:
      self._waiting.remove(req)
      if req.cancelled:
        self.counters["cancelled"] += 1
        self._emit(req, Finished("cancelled", 0, 0, 0))
      else:
        self._fail(req, RequestTimeout("the request timed out while waiting for a free batch row"))
    active = [i for i, s in enumerate(self._slots) if s is not None]
    free = self.max_batch - len(active)
    if free <= 0 or not self._waiting:
      return
    new, self._waiting = self._waiting[:free], self._waiting[free:]
    if len(self._slots) - len(active) < len(new):  # grow (power of two), busy rows first
      self._resize_batch(R.next_power_of_two(len(active) + len(new)), active)
    free_rows = [i for i, s in enumerate(self._slots) if s is None]
    try:
      images = [r.image for r in new if r.image is not None]
      encoded, hits = self._encoded(images) if images else ([], [])
    except Exception as e:  # noqa: BLE001 - an image the vision tower cannot take fails its requests only
      log.exception("image encoding failed")
      for r in new:
        self._fail(r, e)
      return
    per_req, it = [], iter(zip(encoded, hits))
    for r in new:
      per_req.append(next(it) if r.image is not None else (None, False))
    start = 0
    for n in R.power_of_two_parts(len(new)):
      group = list(zip(new[start:start + n], per_req[start:start + n], free_rows[start:start + n]))
      start += n
      try:
        self._prefill_group(group)
      except Exception as e:  # noqa: BLE001
        log.exception("prefill failed")
        for r, _, _ in group:
          self._fail(r, e)

  def _prefill_group(self, group):
    s = self.context
    reqs = [g[0] for g in group]
    prefixes = [self._empty_prefix if enc is None else enc.cache for _, (enc, _), _ in group]
    bases = [0 if enc is None else self.cfg.prefix_len for _, (enc, _), _ in group]
    lengths = [len(r.prompt) for r in reqs]
    t_pad = min(prompt_bucket(max(lengths)), s - max(bases))
    tokens = np.zeros((len(group), t_pad), np.int32)
    for i, r in enumerate(reqs):
      tokens[i, :len(r.prompt)] = r.prompt
    out = self.programs.prefill(self.params["text"], prefixes, tokens, np.asarray(lengths, np.int32),
                                *self._sampling(reqs), top_k=self._top_k(reqs))
    self._cache = self.programs.put_rows(self._cache, out[0], np.asarray([g[2] for g in group], np.int32))
    sampled = jax.device_get(out[1:])
    self.counters["prefill_calls"] += 1
    for i, (req, (enc, hit), row) in enumerate(group):
      used = bases[i] + len(req.prompt)
      self._slots[row] = _Row(req, budget=min(req.max_tokens, s - used), prompt_tokens=used,
                              cached_tokens=bases[i] if hit else 0)
      self._take_token(row, *(x[i] for x in sampled))

  @staticmethod
  def _sampling(reqs):
    return (np.asarray([r.seed for r in reqs], np.int32), np.asarray([r.temperature for r in reqs], np.float32),
            np.asarray([r.top_p for r in reqs], np.float32))

  @staticmethod
  def _top_k(reqs) -> int:
    return R.MAX_TOP_LOGPROBS if any(r.top_logprobs for r in reqs) else 0

  # -- decoding -----------------------------------------------------------------------------------
  def _take_token(self, i: int, token, logprob, top_ids, top_lps):
    """A row's newly sampled token: finish at eos / budget, else hand it out and keep the row."""
    row = self._slots[i]
    req = row.req
    if row.budget <= 0 or int(token) == self.eos:
      self._finish(i, "length" if row.budget <= 0 else "stop")
      return
    top = None
    if req.top_logprobs:
      top = [(int(a), float(b)) for a, b in zip(top_ids[:req.top_logprobs], top_lps[:req.top_logprobs])]
    self._emit(req, Token(int(token), float(logprob), top))
    row.emitted += 1
    row.token = int(token)
    self.counters["generated_tokens"] += 1
    if row.emitted >= row.budget:
      self._finish(i, "length")

  def _finish(self, i: int, reason: str):
    row = self._slots[i]
    self._slots[i] = None
    self.counters["cancelled" if reason == "cancelled" else "finished"] += 1
    self._emit(row.req, Finished(reason, row.prompt_tokens, row.emitted, row.cached_tokens))

  def _step(self):
    now = time.monotonic()
    for i, row in enumerate(self._slots):
      if row is None:
        continue
      if row.req.cancelled:
        self._finish(i, "cancelled")
      elif row.req.deadline <= now:
        self._slots[i] = None
        self._fail(row.req, RequestTimeout("the request timed out during generation"))
    self._maybe_shrink()
    active = [i for i, s in enumerate(self._slots) if s is not None]
    if not active:
      return
    width = len(self._slots)
    tokens = np.zeros((width,), np.int32)
    mask = np.zeros((width,), bool)
    for i in active:
      tokens[i], mask[i] = self._slots[i].token, True
    reqs = [r.req if r is not None else _IDLE for r in self._slots]
    counters = np.asarray([r.emitted if r is not None else 0 for r in self._slots], np.int32)
    seeds, temperature, top_p = self._sampling(reqs)
    out = self.programs.step(self.params["text"], self._cache, tokens, mask, seeds, counters, temperature, top_p,
                             banned=self.banned, top_k=self._top_k(reqs))
    self._cache, sampled = out[0], jax.device_get(out[1:])
    self.counters["decode_steps"] += 1
    self.counters["batched_rows"] += len(active)
    for i in active:
      self._take_token(i, *(x[i] for x in sampled))

  def _maybe_shrink(self):
    """Shrink the running batch to twice the busy rows (a power of two) once they fill a quarter of
    it or less and nobody waits: wide enough that new arrivals rarely force a resize at once."""
    active = [i for i, s in enumerate(self._slots) if s is not None]
    width = 2 * R.next_power_of_two(len(active))
    if active and 2 * width <= len(self._slots) and not self._waiting and self._inbox.empty():
      self._resize_batch(width, active)

  def _fail_all_rows(self, error: Exception):
    for i, row in enumerate(self._slots):
      if row is not None:
        self._slots[i] = None
        self._fail(row.req, error)
    self._cache, self._slots = None, []  # the cache may have been donated to the failed call

  # -- detect / point and other jobs --------------------------------------------------------------
  def _run_points(self):
    self._drain_inbox()
    if not self._points:
      return
    todo, self._points = self._points, []
    now = time.monotonic()
    groups: dict = {}
    for req in todo:
      if req.future.cancelled():
        continue
      if req.deadline <= now:
        self._fail(req, RequestTimeout("the request timed out while waiting"))
        continue
      groups.setdefault((req.with_size, req.max_objects), []).append(req)
    for (with_size, max_objects), reqs in groups.items():
      start = 0
      for n in R.power_of_two_parts(len(reqs)):
        chunk = reqs[start:start + n]
        start += n
        try:
          encoded, _ = self._encoded([r.image for r in chunk])
          enc = encoded[0] if n == 1 else EncodedImage(kvc.stack_caches([e.cache for e in encoded]))
          found = G.generate_points(self.fns, self.params, enc, [r.prompt for r in chunk], with_size, max_objects)
          for r, f in zip(chunk, found):
            self.counters["finished"] += 1
            r.future.set_result(f)
        except Exception as e:  # noqa: BLE001
          log.exception("detect/point failed")
          for r in chunk:
            self._fail(r, e)

  def _run_jobs(self):
    while True:
      try:
        fn, fut = self._jobs.get_nowait()
      except queue.Empty:
        return
      run_job_into(fn, fut)

  def _shutdown(self):
    err = ShuttingDown("the server shut down before the request finished")
    self._drain_inbox()
    for req in self._waiting + self._points:
      self._fail(req, err)
    self._waiting, self._points = [], []
    for i, row in enumerate(self._slots):
      if row is not None:
        self._slots[i] = None
        self._fail(row.req, err)
    while True:
      try:
        _, fut = self._jobs.get_nowait()
      except queue.Empty:
        break
      if not fut.done():
        fut.set_exception(err)

  # -- warm-up ------------------------------------------------------------------------------------
  def _compile_batch_shapes(self):
    """Compile what load brings: the decode step at every running-batch width, the prefill at every
    admission group size for prompts up to 32 tokens, and the row moves between them, so that no
    request under load waits for a compile (longer prompts and logprobs compile on first use).
    Static arguments are passed exactly as serving passes them (jit keys on how they are given)."""
    t, p = self.cfg.text, self.params["text"]
    widths = [1 << i for i in range(R.next_power_of_two(self.max_batch).bit_length())]
    sizes = [n for n in widths if n <= self.max_batch]
    group = {}
    for n in sizes:
      sampling = np.zeros((n,), np.int32), np.zeros((n,), np.float32), np.ones((n,), np.float32)
      for bucket in WARM_PROMPT_BUCKETS:
        if self.cfg.prefix_len + bucket <= self.context:
          group[n] = self.programs.prefill(p, [self._empty_prefix] * n, np.zeros((n, bucket), np.int32),
                                           np.ones((n,), np.int32), *sampling, top_k=0)[0]
    for width in widths:
      cache = kvc.init_cache(t.n_layers, width, self.context, t.n_kv_heads, t.head_dim, jnp.dtype(t.dtype))
      sampling = np.zeros((width,), np.int32), np.zeros((width,), np.float32), np.ones((width,), np.float32)
      cache = self.programs.step(p, cache, np.zeros((width,), np.int32), np.zeros((width,), bool), sampling[0],
                                 sampling[0], *sampling[1:], banned=self.banned, top_k=0)[0]
      for n in (n for n in sizes if n <= width):
        cache = self.programs.put_rows(cache, group[n], np.arange(n, dtype=np.int32))
      for other in widths:
        if other != width:
          jax.block_until_ready(self.programs.take_rows(cache, np.zeros((other,), np.int32)))

  def warmup(self, image: RequestImage, prompt: list, text_prompt: list, timeout: float = 600.0):
    """Compile the common paths (image encode, prefill, decode at every batch width) before serving."""
    done = threading.Event()
    errors = []

    def on_event(ev):
      if isinstance(ev, Failed):
        errors.append(ev.error)
      if isinstance(ev, (Finished, Failed)):
        done.set()
    for img, p in ((image, prompt), (None, text_prompt)):
      done.clear()
      self.submit(GenerationRequest(list(p), img, on_event, max_tokens=2))
      if not done.wait(timeout):
        raise RuntimeError("warm-up did not finish")
      if errors:
        raise errors[0]
    self.run_job(self._compile_batch_shapes).result(timeout)
    self.image_cache.clear()
    self.image_cache.hits = self.image_cache.misses = 0
    for k in ("requests", "finished", "decode_steps", "generated_tokens", "prefill_calls", "vision_images",
              "batched_rows"):
      self.counters[k] = 0
    self.counters["vision_seconds"] = 0.0


_IDLE = GenerationRequest([0], None, lambda ev: None)  # sampling settings of an empty row
