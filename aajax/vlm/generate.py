"""Batched generation loops: text (caption / query) and points or boxes (point / detect).

Each loop starts from an `EncodedImage` (or an empty cache for text-only prompts), prefills the
prompts of all rows at once (right padded to a bucket, per-row lengths), then runs one jitted
decoder step per position for the whole batch; rows that finished stop advancing. The host checks
the stop condition after every step (one small transfer), which is what streaming needs anyway.

Reference rules kept: the first token is sampled from the prefill logits as is; later steps ban the
answer id; generation stops at eos or `max_tokens`. Points/boxes are always greedy: after the prompt,
while the next token is not eos and fewer than `max_objects` were found, read x from the hidden
state, feed its encoding, read y, feed it, (detect:) read the size, feed it, and take the next
token from the last step's logits. The coordinate token itself is never fed.
"""
import dataclasses
from typing import Iterator, Optional

import jax
import jax.numpy as jnp
import numpy as np

from aajax.decoder import kv_cache as kvc
from aajax.errors import InputError
from aajax.vlm.runtime import EncodedImage, MoondreamFns

DEFAULT_MAX_TOKENS = 768
DEFAULT_TEMPERATURE = 0.5
DEFAULT_TOP_P = 0.3
DEFAULT_MAX_OBJECTS = 50
PROMPT_BUCKET = 16
CACHE_BUCKET = 64


@dataclasses.dataclass(frozen=True)
class Sampling:
  max_tokens: int = DEFAULT_MAX_TOKENS
  temperature: float = DEFAULT_TEMPERATURE
  top_p: float = DEFAULT_TOP_P
  seed: int = 0

  def check(self) -> "Sampling":
    if self.max_tokens < 0:
      raise InputError(f"max_tokens must be >= 0, got {self.max_tokens}")
    if self.temperature < 0:
      raise InputError(f"temperature must be >= 0, got {self.temperature}")
    if not 0 < self.top_p <= 1:
      raise InputError(f"top_p must be in (0, 1], got {self.top_p}")
    return self


def _round_up(n: int, m: int) -> int:
  return -(-n // m) * m


def prefill_prompts(fns: MoondreamFns, params, start: Optional[EncodedImage], prompts: list[list[int]],
                    extra: int, spatial: Optional[list] = None):
  """Prefill per-row prompts after what `start` holds (the image prefix, or any earlier turn; rows
  may be at different positions), or from scratch when start is None, into a cache with room for
  `extra` more positions. Returns (prefill output, cache size).

  spatial: per row None or (offset, refs): the placeholder ids at prompt[offset:] get the region
  encodings of the refs' coordinates and sizes instead of token embeddings (as the reference)."""
  cfg = fns.cfg
  b = len(prompts)
  lengths = np.array([len(p) for p in prompts], np.int32)
  if (lengths == 0).any():
    raise InputError("empty prompt")
  base = 0 if start is None else int(np.asarray(start.cache["length"]).max())
  longest = base + int(lengths.max())
  if longest > cfg.text.max_context:
    raise InputError(f"prompt of {int(lengths.max())} tokens does not fit the context of {cfg.text.max_context} "
                     f"({base} positions already taken)")
  t_pad = min(_round_up(int(lengths.max()), PROMPT_BUCKET), cfg.text.max_context - base)
  size = min(_round_up(base + t_pad + extra, CACHE_BUCKET), cfg.text.max_context)
  size = max(size, base + t_pad)
  if start is None:
    cache = kvc.init_cache(cfg.text.n_layers, b, size, cfg.text.n_kv_heads, cfg.text.head_dim,
                           jnp.dtype(cfg.text.dtype))
  else:
    if start.batch != b:
      raise InputError(f"{b} prompts for {start.batch} encoded images")
    cache = kvc.resize_cache(start.cache, size)
  tokens = np.zeros((b, t_pad), np.int32)
  for i, p in enumerate(prompts):
    tokens[i, :len(p)] = p
  emb = fns.steps.embed(params["text"], jnp.asarray(tokens))
  if spatial and any(spatial):
    emb = _place_spatial(fns, params, emb, tokens, spatial)
  out = fns.steps.prefill(params["text"], emb, cache, jnp.asarray(lengths))
  return out, size


def _place_spatial(fns, params, emb, tokens, spatial):
  from aajax.vlm.tokenizer import spatial_values
  coords, sizes, coord_at, size_at = [], [], [], []
  tc = fns.cfg.tokenizer
  for row, item in enumerate(spatial):
    if not item:
      continue
    offset, refs = item
    c, s = spatial_values(refs)
    n = len(c) + len(s)
    ids = tokens[row, offset:offset + n]
    coord_at += [(row, offset + j) for j in np.nonzero(ids == tc.coord_id)[0]]
    size_at += [(row, offset + j) for j in np.nonzero(ids == tc.size_id)[0]]
    coords += c
    sizes += s
  c_emb, s_emb = fns.encode_values(params, jnp.asarray(coords, jnp.float32).reshape(-1, 1),
                                   jnp.asarray(sizes, jnp.float32).reshape(-1, 2))
  if coord_at:
    r, c = np.array(coord_at).T
    emb = emb.at[r, c].set(c_emb.astype(emb.dtype))
  if size_at:
    r, c = np.array(size_at).T
    emb = emb.at[r, c].set(s_emb.astype(emb.dtype))
  return emb


@dataclasses.dataclass
class TextResult:
  tokens: list[list[int]]
  logprobs: list[list[float]]


def generate_tokens(fns: MoondreamFns, params, start: Optional[EncodedImage], prompts: list[list[int]],
                    sampling: Sampling, spatial=None) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """Yields (tokens [B], logprobs [B], emitted [B] bool) per step: the batch's next tokens, and which
  rows emitted one (rows stop at eos, max_tokens or the end of the context)."""
  cfg, tok_cfg = fns.cfg, fns.cfg.tokenizer
  sampling = sampling.check()
  b = len(prompts)
  out, size = prefill_prompts(fns, params, start, prompts, sampling.max_tokens, spatial)
  cache = out["cache"]
  temperature = jnp.full((b,), sampling.temperature, jnp.float32)
  top_p = jnp.full((b,), sampling.top_p, jnp.float32)
  key = jax.random.PRNGKey(sampling.seed)
  key, sub = jax.random.split(key)
  _, tokens, logprobs = fns.steps.sample(out["logits"], sub, temperature, top_p)  # no ban on the first
  lengths = np.asarray(cache["length"])
  budget = np.minimum(sampling.max_tokens, size - lengths)  # each emitted token needs one more slot
  banned = tuple(i for i in (tok_cfg.answer_id,) if i is not None)
  emitted = np.zeros((b,), np.int64)
  active = np.ones((b,), bool)
  while True:
    toks = np.asarray(tokens)
    active &= (toks != tok_cfg.eos_id) & (emitted < budget)
    if not active.any():
      return
    yield toks, np.asarray(logprobs), active
    emitted += active
    if not (active & (emitted < budget)).any():
      return  # skip a decode step whose token nobody would emit
    key, sub = jax.random.split(key)
    # The emitted token of each active row is fed back at its next position.
    out = fns.steps.decode_tokens(params["text"], tokens, cache, sub, temperature, top_p,
                                  jnp.asarray(active), banned=banned)
    cache, tokens, logprobs = out["cache"], out["tokens"], out["logprobs"]


def generate_text(fns, params, start, prompts, sampling, spatial=None) -> TextResult:
  res = TextResult([[] for _ in prompts], [[] for _ in prompts])
  for toks, lps, active in generate_tokens(fns, params, start, prompts, sampling, spatial):
    for i in np.nonzero(active)[0]:
      res.tokens[i].append(int(toks[i]))
      res.logprobs[i].append(float(lps[i]))
  return res


def _is_cjk(cp: int) -> bool:
  return 0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x2F800 <= cp <= 0x2FA1F


class StreamText:
  """The reference's streaming rule for one row: flush on newline, emit CJK at once, otherwise emit
  up to the last space (so words are never cut), and the rest at the end."""

  def __init__(self, decode):
    self.decode, self.cache, self.printed = decode, [], 0

  def push(self, token: int) -> str:
    self.cache.append(token)
    text = self.decode(self.cache)
    if text.endswith("\n"):
      piece, self.cache, self.printed = text[self.printed:], [], 0
      return piece
    if text and _is_cjk(ord(text[-1])):
      piece = text[self.printed:]
      self.printed += len(piece)
      return piece
    last_space = text.rfind(" ", self.printed)
    if last_space >= self.printed:
      piece = text[self.printed:last_space + 1]
      self.printed += len(piece)
      return piece
    return ""

  def flush(self) -> str:
    if not self.cache:
      return ""
    return self.decode(self.cache)[self.printed:]


def stream_text(fns, params, start, prompts, sampling, decode, spatial=None) -> Iterator[list[str]]:
  """Yields, per step, a list with each row's newly printable text ("" when nothing new)."""
  streams = [StreamText(decode) for _ in prompts]
  for toks, _, active in generate_tokens(fns, params, start, prompts, sampling, spatial):
    pieces = [streams[i].push(int(toks[i])) if active[i] else "" for i in range(len(prompts))]
    if any(pieces):
      yield pieces
  tail = [s.flush() for s in streams]
  if any(tail):
    yield tail


def generate_points(fns: MoondreamFns, params, start: EncodedImage, prompts: list[list[int]], with_size: bool,
                    max_objects: int = DEFAULT_MAX_OBJECTS) -> list[list[dict]]:
  """Greedy point (x, y) or box (x_min, y_min, x_max, y_max) lists, one per row, normalised to [0, 1]
  (boxes are not clamped, as in the reference)."""
  if max_objects < 0:
    raise InputError(f"max_objects must be >= 0, got {max_objects}")
  eos = fns.cfg.tokenizer.eos_id
  per_object = 3 if with_size else 2
  out, size = prefill_prompts(fns, params, start, prompts, per_object * max_objects)
  b = len(prompts)
  cache, hidden = out["cache"], out["hidden"]
  active = (np.asarray(jnp.argmax(out["logits"], -1)) != eos) & (max_objects > 0)
  results = [[] for _ in range(b)]
  while active.any():
    active &= np.asarray(cache["length"]) + per_object <= size  # no room left: stop that row
    if not active.any():
      break
    act = jnp.asarray(active)
    x, o = fns.coord_step(params, hidden, cache, act)
    y, o = fns.coord_step(params, o["hidden"], o["cache"], act)
    if with_size:
      wh, o = fns.size_step(params, o["hidden"], o["cache"], act)
      wh = np.asarray(wh)
    cache, hidden = o["cache"], o["hidden"]
    xs, ys = np.asarray(x), np.asarray(y)
    for i in np.nonzero(active)[0]:
      if with_size:
        w, h = float(wh[i, 0]), float(wh[i, 1])
        results[i].append({"x_min": float(xs[i]) - w / 2, "y_min": float(ys[i]) - h / 2,
                           "x_max": float(xs[i]) + w / 2, "y_max": float(ys[i]) + h / 2})
      else:
        results[i].append({"x": float(xs[i]), "y": float(ys[i])})
    counts = np.array([len(r) for r in results])
    active &= (np.asarray(jnp.argmax(o["logits"], -1)) != eos) & (counts < max_objects)
  return results


@dataclasses.dataclass
class Reasoning:
  text: str
  grounding: list  # [{"start_idx", "end_idx", "points": [(x, y), ...]}]


def generate_reasoning(fns: MoondreamFns, params, start: EncodedImage, prompts: list[list[int]],
                       sampling: Sampling, decode, spatial=None) -> tuple[EncodedImage, list[Reasoning]]:
  """The reasoning phase of a query (prompt ending in the thinking id), batched.

  Runs until the answer id (or max_tokens); eos and size ids are banned. A sampled coordinate id is
  fed back as the encoding of the coordinate read from the current hidden state, and recorded;
  ids 7 / 9 open a new grounding chunk; consecutive coordinates of a chunk pair up into points.
  Returns the cache after the reasoning (for the answer phase) and each row's text and grounding.
  (The reference, when the very first token is a coordinate, reads it from the whole prompt's hidden
  states and fails; here it is read from the last prompt position like every later one.)"""
  tc = fns.cfg.tokenizer
  sampling = sampling.check()
  b = len(prompts)
  out, size = prefill_prompts(fns, params, start, prompts, sampling.max_tokens, spatial)
  cache, hidden = out["cache"], out["hidden"]
  temperature = jnp.full((b,), sampling.temperature, jnp.float32)
  top_p = jnp.full((b,), sampling.top_p, jnp.float32)
  key, sub = jax.random.split(jax.random.PRNGKey(sampling.seed))
  _, tokens, _ = fns.steps.sample(out["logits"], sub, temperature, top_p)
  chunks = [[[]] for _ in range(b)]
  coords = [[[]] for _ in range(b)]
  budget = np.minimum(sampling.max_tokens, size - np.asarray(cache["length"]))
  emitted, active = np.zeros((b,), np.int64), np.ones((b,), bool)
  banned = tuple(i for i in (tc.eos_id, tc.size_id) if i is not None)
  while True:
    toks = np.asarray(tokens)
    active &= (toks != tc.answer_id) & (emitted < budget)
    if not active.any():
      break
    values, emb = fns.reasoning_inputs(params, tokens, hidden)
    values = np.asarray(values)
    for i in np.nonzero(active)[0]:
      if toks[i] in (tc.start_ground_points_id, tc.end_ground_id):
        chunks[i].append([])
        coords[i].append([])
      chunks[i][-1].append(int(toks[i]))
      if toks[i] == tc.coord_id:
        coords[i][-1].append(float(values[i]))
    emitted += active
    o = fns.steps.decode(params["text"], emb, cache, jnp.asarray(active))
    cache, hidden = o["cache"], o["hidden"]
    key, sub = jax.random.split(key)
    _, tokens, _ = fns.steps.sample(o["logits"], sub, temperature, top_p, banned=banned)
  return EncodedImage(cache), [_reasoning(decode, c, g) for c, g in zip(chunks, coords)]


def _reasoning(decode, chunks, coords) -> Reasoning:
  texts = [decode(c) for c in chunks]
  grounding, start = [], 0
  for text, cs in zip(texts, coords):
    if len(cs) > 1:
      points = [(cs[j], cs[j + 1]) for j in range(0, len(cs) - len(cs) % 2, 2)]
      grounding.append({"start_idx": start, "end_idx": start + len(text), "points": points})
    start += len(text)
  return Reasoning("".join(texts), grounding)
