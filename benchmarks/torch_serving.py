"""The PyTorch reference computation behind the server's engine interface (benchmarks only).

`TorchEngine` answers `GenerationRequest`s (and detect / point requests and jobs) one at a time, as the reference Moondream does (its
`batch_answer` is a loop): vision tower + BOS/image prefill with the bidirectional prefix, prompt
prefill, then one decode step per token with a KV cache, greedy or the reference's temperature /
top-p rule, the answer id banned after the first token. The model math is the torch reference of
the parity tests (`tests/moondream/torch_reference.py`), extended here with a KV cache; encoded
images are kept per image (as a caller of the reference keeps its `EncodedImage`). Dense Moondream
configs only (no MoE / tau).
"""
import concurrent.futures
import math
import queue
import threading
import time

import numpy as np
import torch
import torch.nn.functional as F

from aajax.serve import engine as E
from aajax.vlm import crops as C
from tests.moondream import torch_reference as R


class TorchMoondream:
  def __init__(self, state: dict, cfg):
    if cfg.text.moe is not None or cfg.text.tau:
      raise ValueError("the torch serving reference covers dense Moondream configs only")
    self.state = {k: torch.from_numpy(np.ascontiguousarray(v, np.float32)) for k, v in state.items()}
    self.cfg = cfg

  def _attention(self, n, x, pos, past, mask):
    tc = self.cfg.text
    b, length, d = x.shape
    hd = d // tc.n_heads
    qkv = R.linear(self.state, f"{n}.qkv", x)
    q, k, v = qkv.split([tc.n_heads * hd, tc.n_kv_heads * hd, tc.n_kv_heads * hd], dim=-1)
    q = R.rope_interleaved(q.view(b, length, tc.n_heads, hd).transpose(1, 2), pos, tc.rotary_dim, tc.rope_theta)
    k = R.rope_interleaved(k.view(b, length, tc.n_kv_heads, hd).transpose(1, 2), pos, tc.rotary_dim, tc.rope_theta)
    v = v.view(b, length, tc.n_kv_heads, hd).transpose(1, 2)
    if past is not None:
      k, v = torch.cat([past[0], k], 2), torch.cat([past[1], v], 2)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=tc.n_heads != tc.n_kv_heads)
    return R.linear(self.state, f"{n}.proj", out.transpose(1, 2).reshape(b, length, d)), (k, v)

  def forward(self, x, pos, past=None, mask=None):
    """x [1, L, d] at positions pos [L]; past: per-layer (k, v) -> (raw hidden, new per-layer kv)."""
    kv = []
    for i in range(self.cfg.text.n_layers):
      n = f"text.blocks.{i}"
      h = R.layer_norm(self.state, f"{n}.ln", x)
      a, layer_kv = self._attention(f"{n}.attn", h, pos, None if past is None else past[i], mask)
      x = x + a + R.mlp(self.state, f"{n}.mlp", h)
      kv.append(layer_kv)
    return x, kv

  def encode_image(self, pixels: np.ndarray):
    """BOS + image tokens through the decoder (bidirectional prefix): the reusable per-layer kv."""
    vc = self.cfg.vision
    crops, tiling = C.overlap_crop_image(pixels, vc)
    img = R.image_tokens(self.state, vc, torch.from_numpy(C.normalize(crops)).permute(0, 3, 1, 2), tiling)
    x = torch.cat([R.embed(self.state, [self.cfg.tokenizer.bos_id]), img])[None]
    _, kv = self.forward(x, torch.arange(x.shape[1]))  # no mask: the whole prefix attends both ways
    return kv

  def extend(self, x, past, start: int):
    """Embeddings x [1, L, d] appended causally at `start` -> (last raw hidden [d], new kv)."""
    length = x.shape[1]
    q = torch.arange(start, start + length)
    mask = torch.arange(start + length)[None, :] <= q[:, None]
    hidden, kv = self.forward(x, q, past, mask)
    return hidden[0, -1], kv

  def prefill(self, prompt, past, start: int):
    hidden, kv = self.extend(R.embed(self.state, prompt)[None], past, start)
    return R.text_logits(self.state, hidden), kv

  def points(self, image_kv, prompt, with_size: bool, max_objects: int, context: int) -> list[dict]:
    """The reference's greedy detect / point loop, with a KV cache: after the prompt, while the
    next token is not EOS, x then y coordinates (then the size) are decoded from the hidden state
    and fed back through the region encoders. Boxes are centre +- size / 2, not clamped."""
    st, region = self.state, self.cfg.region
    pos = self.cfg.prefix_len
    hidden, kv = self.extend(R.embed(st, prompt)[None], image_kv, pos)
    pos += len(prompt)
    per_object = 3 if with_size else 2
    out = []
    while (int(R.text_logits(st, hidden).argmax()) != self.cfg.tokenizer.eos_id and len(out) < max_objects
           and pos + per_object <= context):
      coords = []
      for _ in range(2):
        c = R.decode_head(st, "coord_decoder", hidden, True).argmax() / region.coord_out_dim
        hidden, kv = self.extend(R.encode_coordinate(st, c.reshape(1, 1, 1)), kv, pos)
        pos += 1
        coords.append(float(c))
      x, y = coords
      if not with_size:
        out.append({"x": x, "y": y})
        continue
      s = R.decode_head(st, "size_decoder", hidden, True).view(2, -1).argmax(-1).float()
      wh = 2.0 ** (10 * s / (region.size_out_dim // 2 - 1) - 10)
      hidden, kv = self.extend(R.encode_size(st, wh.reshape(1, 1, 2)), kv, pos)
      pos += 1
      w, h = float(wh[0]), float(wh[1])
      out.append({"x_min": x - w / 2, "y_min": y - h / 2, "x_max": x + w / 2, "y_max": y + h / 2})
    return out

  def decode(self, token: int, past, pos: int):
    hidden, kv = self.forward(R.embed(self.state, [token])[None], torch.tensor([pos]), past)
    return R.text_logits(self.state, hidden[0, -1]), kv


def sample(logits, temperature: float, top_p: float, generator, banned=()):
  """The reference rule: greedy at 0, else softmax(l / T), nucleus by exclusive cumsum, renormalise."""
  logits = logits.clone()
  for i in banned:
    logits[i] = -math.inf
  logprobs = torch.log_softmax(logits, -1)
  if temperature <= 0:
    token = int(torch.argmax(logits))
  else:
    probs = torch.softmax(logits / temperature, -1)
    p, order = torch.sort(probs, descending=True)
    p[(torch.cumsum(p, -1) - p) > top_p] = 0
    token = int(order[torch.multinomial(p / p.sum(), 1, generator=generator)])
  return token, float(logprobs[token])


class TorchEngine:
  """The `aajax.serve.engine.Engine` interface over `TorchMoondream`, one request at a time."""

  def __init__(self, model: TorchMoondream, context: int, threads: int = 0):
    self.model, self.cfg, self.context, self.threads = model, model.cfg, context, threads
    self.max_batch = 1
    self.image_cache = _CountingDict()
    self._inbox: queue.Queue = queue.Queue()
    self._stop = threading.Event()
    self._busy = False
    self.counters = {"requests": 0, "finished": 0, "failed": 0, "cancelled": 0, "timed_out": 0,
                     "decode_steps": 0, "batched_rows": 0, "generated_tokens": 0, "vision_images": 0}
    self._thread = threading.Thread(target=self._loop, name="torch-engine", daemon=True)
    self._thread.start()

  @classmethod
  def from_jax(cls, md, threads: int = 0):
    """The same weights as a JAX `Moondream`; threads: torch intra-op threads (0: torch's default)."""
    from weights_convert.moondream import params_to_state
    state = params_to_state(md.params, md.cfg)
    return cls(TorchMoondream(state, md.cfg), md.cfg.text.max_context, threads)

  @property
  def alive(self) -> bool:
    return self._thread.is_alive() and not self._stop.is_set()

  def queue_depth(self) -> int:
    return self._inbox.qsize()

  def active_rows(self) -> int:
    return int(self._busy)

  def stats(self) -> dict:
    return {"active_rows": self.active_rows(), "queue_depth": self.queue_depth(), **self.counters,
            "image_cache": self.image_cache.stats()}

  def submit(self, req):
    self.counters["requests"] += 1
    self._inbox.put(req)
    return req

  def warmup(self, *args, **kw):
    """Nothing to compile."""

  def submit_points(self, req):
    """detect / point requests, answered in arrival order on the engine thread (no batching)."""
    self.counters["requests"] += 1
    self._inbox.put(req)
    return req.future

  def run_job(self, fn):
    """Run fn() on the engine thread between requests, as the JAX engine does between steps."""
    fut = concurrent.futures.Future()
    self._inbox.put((fn, fut))
    return fut

  def close(self, timeout: float = 10.0):
    self._stop.set()
    self._inbox.put(None)
    self._thread.join(timeout)

  def _loop(self):
    torch.set_grad_enabled(False)
    if self.threads:  # per thread under OpenMP: set it where the work runs
      torch.set_num_threads(self.threads)
    while not self._stop.is_set():
      req = self._inbox.get()
      if req is None:
        break
      self._busy = True
      try:
        if isinstance(req, tuple):
          E.run_job_into(*req)
        elif isinstance(req, E.PointsRequest):
          self._points(req)
        else:
          self._answer(req)
      except Exception as e:  # noqa: BLE001 - report to the client, keep serving
        self.counters["failed"] += 1
        req.on_event(E.Failed(e))
      finally:
        self._busy = False

  def _image_kv(self, image):
    """The image's BOS + image-token kv, from the per-image cache; (kv, cache hit)."""
    kv = self.image_cache.get(image.key)
    if kv is not None:
      return kv, True
    kv = self.model.encode_image(image.pixels)
    self.image_cache[image.key] = kv
    self.counters["vision_images"] += 1
    return kv, False

  def _points(self, req):
    if not req.future.set_running_or_notify_cancel():
      return
    try:
      if time.monotonic() > req.deadline:
        raise E.RequestTimeout("the request timed out while waiting")
      kv, _ = self._image_kv(req.image)
      found = self.model.points(kv, req.prompt, req.with_size, req.max_objects, self.context)
      self.counters["finished"] += 1
      req.future.set_result(found)
    except Exception as e:  # noqa: BLE001 - the caller gets the error
      self.counters["failed"] += 1
      req.future.set_exception(e)

  def _answer(self, req):
    tok = self.cfg.tokenizer
    if req.image is not None:
      kv, hit = self._image_kv(req.image)
      start = self.cfg.prefix_len
    else:
      kv, start, hit = None, 0, False
    logits, kv = self.model.prefill(req.prompt, kv, start)
    pos = start + len(req.prompt)
    budget = min(req.max_tokens, self.context - pos)
    gen = torch.Generator().manual_seed(int(req.seed))
    banned, emitted = (), 0
    while True:
      if req.cancelled or time.monotonic() > req.deadline:
        if req.cancelled:
          self.counters["cancelled"] += 1
          req.on_event(E.Finished("cancelled", pos, emitted, 0))
        else:
          self.counters["timed_out"] += 1
          req.on_event(E.Failed(E.RequestTimeout("the request timed out")))
        return
      token, lp = sample(logits, req.temperature, req.top_p, gen, banned)
      if budget <= 0 or token == tok.eos_id:
        break
      req.on_event(E.Token(token, lp, None))
      emitted += 1
      self.counters["generated_tokens"] += 1
      if emitted >= budget:
        break
      logits, kv = self.model.decode(token, kv, pos)
      self.counters["decode_steps"] += 1
      self.counters["batched_rows"] += 1
      pos += 1
      banned = tuple(i for i in (tok.answer_id,) if i is not None)
    self.counters["finished"] += 1
    req.on_event(E.Finished("length" if budget <= 0 or emitted >= budget else "stop",
                            start + len(req.prompt), emitted, start if hit else 0))


class _CountingDict(dict):
  hits = misses = 0

  def get(self, key, default=None):
    if key in self:
      self.hits += 1
      return self[key]
    self.misses += 1
    return default

  def stats(self) -> dict:
    return {"entries": len(self), "hits": self.hits, "misses": self.misses}
