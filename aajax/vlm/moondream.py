"""The Moondream API: caption, query, detect and point, batched, over explicit params.

Functional form (what a server calls; nothing is held but compiled code):
    fns = MoondreamFns(cfg); tok = MoondreamTokenizer.from_file(dir, cfg.tokenizer)
    caption(fns, params, tok, images, length="normal")      -> [{"caption": str}, ...]
    query(fns, params, tok, images, questions)               -> [{"answer": str}, ...]
    detect(fns, params, tok, images, "cat")                  -> [{"objects": [box, ...]}, ...]
    point(fns, params, tok, images, "cat")                   -> [{"points": [{"x", "y"}, ...]}, ...]
Object form: `Moondream.from_pretrained(dir)` then `md.caption(image)` etc.; a single image (or
EncodedImage of one row) gives a single dict, a list gives a list.

`images` may be PIL images, arrays, or an `EncodedImage` from `encode_image` (reused across
questions). One image with several questions, or several images with one question each, broadcast.
Sampling: `max_tokens`, `temperature` (0 = greedy), `top_p`, `seed`; `logprobs=True` adds the
per-token log-probabilities ("tokens", "logprobs") to each text result. `stream=True` returns a
`{key: generator}` yielding text pieces (one row) or per-row piece lists (several rows).
"""
from typing import Optional

import jax
import jax.numpy as jnp

from aajax.errors import InputError
from aajax.vlm import generate as G
from aajax.vlm.config import MoondreamConfig
from aajax.vlm.runtime import EncodedImage, MoondreamFns, encode_image
from aajax.vlm.tokenizer import MoondreamTokenizer

CAPTION_LENGTHS = ("short", "normal", "long")


def _as_encoded(fns, params, images) -> EncodedImage:
  if isinstance(images, EncodedImage):
    return images
  return encode_image(fns, params, list(images) if isinstance(images, (list, tuple)) else [images])


def _broadcast(enc: EncodedImage, n_prompts: int) -> EncodedImage:
  if enc.batch == n_prompts:
    return enc
  if enc.batch == 1:
    return enc.rows([0] * n_prompts)
  raise InputError(f"{n_prompts} prompts for {enc.batch} images: give one prompt, or one per image")


def _sampling(max_tokens, temperature, top_p, seed) -> G.Sampling:
  return G.Sampling(max_tokens, temperature, top_p, seed).check()


def _text_results(tok, res: G.TextResult, key: str, logprobs: bool) -> list[dict]:
  out = []
  for toks, lps in zip(res.tokens, res.logprobs):
    item = {key: tok.decode(toks)}
    if logprobs:
      item["tokens"], item["logprobs"] = toks, lps
    out.append(item)
  return out


def _run_text(fns, params, tok, start, prompts, key, sampling, stream, logprobs, spatial=None):
  if stream:  # the reference's shape: {key: generator of text pieces}
    gen = G.stream_text(fns, params, start, prompts, sampling, tok.decode, spatial)
    return {key: (p if len(prompts) > 1 else p[0] for p in gen)}
  return _text_results(tok, G.generate_text(fns, params, start, prompts, sampling, spatial), key, logprobs)


def caption(fns: MoondreamFns, params, tok: MoondreamTokenizer, images, length: str = "normal",
            max_tokens: int = G.DEFAULT_MAX_TOKENS, temperature: float = G.DEFAULT_TEMPERATURE,
            top_p: float = G.DEFAULT_TOP_P, seed: int = 0, stream: bool = False, logprobs: bool = False):
  if length not in CAPTION_LENGTHS:
    raise InputError(f"caption length must be one of {CAPTION_LENGTHS}, got {length!r}")
  prompt = tok.caption_prompt(length)
  enc = _as_encoded(fns, params, images)
  return _run_text(fns, params, tok, enc, [prompt] * enc.batch, "caption",
                   _sampling(max_tokens, temperature, top_p, seed), stream, logprobs)


def query(fns: MoondreamFns, params, tok: MoondreamTokenizer, images, questions,
          max_tokens: int = G.DEFAULT_MAX_TOKENS, temperature: float = G.DEFAULT_TEMPERATURE,
          top_p: float = G.DEFAULT_TOP_P, seed: int = 0, stream: bool = False, logprobs: bool = False,
          spatial_refs=None, reasoning: bool = False):
  """images None: a text-only query (BOS + template, plain causal attention, as the reference).

  spatial_refs: points (x, y) / boxes (x_min, y_min, x_max, y_max) the question refers to; one list
  for a single question, or one list (or None) per question.
  reasoning: first generate the model's reasoning (ending at the answer id), returned as
  {"reasoning": {"text", "grounding"}} next to the answer (starmie-generation models)."""
  questions = [questions] if isinstance(questions, str) else list(questions)
  if not questions:
    raise InputError("no question given")
  if spatial_refs and images is None:
    raise InputError("spatial_refs can only be used with an image")
  per_row = _per_question(spatial_refs, len(questions))
  if reasoning and images is None:
    raise InputError("reasoning needs an image")
  prompts = [tok.query_prompt(q, r, reasoning) for q, r in zip(questions, per_row)]
  spatial = [(tok.spatial_offset(), r) if r else None for r in per_row]
  if images is None:
    start = None
    prompts = [[fns.cfg.tokenizer.bos_id] + p for p in prompts]
  else:
    enc = _as_encoded(fns, params, images)
    if len(prompts) == 1 and enc.batch > 1:
      prompts, spatial = prompts * enc.batch, spatial * enc.batch
    start = _broadcast(enc, len(prompts))
  sampling = _sampling(max_tokens, temperature, top_p, seed)
  if reasoning:
    start, thoughts = G.generate_reasoning(fns, params, start, prompts, sampling, tok.decode, spatial)
    answers = _run_text(fns, params, tok, start, [[tok.cfg.answer_id]] * len(prompts), "answer", sampling,
                        stream, logprobs)
    extra = [{"reasoning": {"text": r.text, "grounding": r.grounding}} for r in thoughts]
    if stream:
      return {**extra[0], **answers} if len(extra) == 1 else {"reasoning": [e["reasoning"] for e in extra], **answers}
    return [{**e, **a} for e, a in zip(extra, answers)]
  return _run_text(fns, params, tok, start, prompts, "answer", sampling, stream, logprobs, spatial)


def _per_question(refs, n: int) -> list:
  if not refs:
    return [None] * n
  if all(isinstance(r, (tuple, list)) and r and isinstance(r[0], (int, float)) for r in refs):
    return [list(refs)] * n  # one list of refs shared by every question
  if len(refs) != n:
    raise InputError(f"{len(refs)} spatial_refs lists for {n} questions")
  return [list(r) if r else None for r in refs]


def _objects(fns, params, tok, images, objects, task, max_objects):
  objects = [objects] if isinstance(objects, str) else list(objects)
  prompts = [tok.object_prompt(task, o) for o in objects]
  enc = _as_encoded(fns, params, images)
  if len(prompts) == 1 and enc.batch > 1:
    prompts = prompts * enc.batch
  found = G.generate_points(fns, params, _broadcast(enc, len(prompts)), prompts, task == "detect", max_objects)
  return [{"objects" if task == "detect" else "points": f} for f in found]


def detect(fns, params, tok, images, objects, max_objects: int = G.DEFAULT_MAX_OBJECTS):
  return _objects(fns, params, tok, images, objects, "detect", max_objects)


def point(fns, params, tok, images, objects, max_objects: int = G.DEFAULT_MAX_OBJECTS):
  return _objects(fns, params, tok, images, objects, "point", max_objects)


def to_device(params, dtype=None):
  """Host arrays -> device arrays, in place, one leaf at a time (peak: the params plus one tensor).

  Params must live on the device: a numpy leaf passed to a jitted function is copied on every
  call (for a decode step, the whole model per token)."""
  for key, leaf in params.items():
    if isinstance(leaf, dict):
      to_device(leaf, dtype)
    else:
      params[key] = jax.device_put(leaf if dtype is None else jnp.asarray(leaf, dtype))
  return params


class Moondream:
  """Params + tokenizer + compiled functions, with the reference's method names."""

  def __init__(self, cfg: MoondreamConfig, params, tokenizer: Optional[MoondreamTokenizer] = None):
    self.cfg, self.params, self.tokenizer = cfg, to_device(params), tokenizer
    self.fns = MoondreamFns(cfg)

  @classmethod
  def from_pretrained(cls, path: str, dtype: Optional[str] = None, tokenizer: Optional[str] = None,
                      variant: Optional[str] = None) -> "Moondream":
    """A converted model directory (python -m weights_convert.moondream). dtype "bfloat16" also
    stores the params in bf16 (half the memory; the right choice on accelerators). variant: a
    Moondream LoRA variant file (.pt / .safetensors), applied at load (`aajax.vlm.lora_variant`:
    qkv, fc1, fc2 merged, the proj pair as the attention's side branch, as the reference computes it)."""
    import os
    from aajax.model_dir import load_model
    modules, params = load_model(path, expect_kind="moondream", **({"dtype": dtype} if dtype else {}))
    cfg = modules.cfg
    if variant:
      from aajax.vlm import lora_variant
      cfg, params = lora_variant.apply_variant(cfg, params, lora_variant.load_variant(variant))
    params = to_device(params, jnp.dtype(dtype) if dtype else None)
    tok_path = tokenizer or os.path.join(path, "tokenizer.json")
    tok = MoondreamTokenizer.from_file(tok_path, cfg.tokenizer) if (tokenizer or os.path.exists(tok_path)) else None
    return cls(cfg, params, tok)

  def _tok(self) -> MoondreamTokenizer:
    if self.tokenizer is None:
      raise InputError("this model was loaded without a tokenizer.json; pass tokenizer=<path>")
    return self.tokenizer

  @staticmethod
  def _single(images) -> bool:
    if isinstance(images, EncodedImage):
      return images.batch == 1
    return not isinstance(images, (list, tuple))

  def _unwrap(self, out, single: bool):
    if isinstance(out, list) and single and len(out) == 1:
      return out[0]
    return out

  def encode_image(self, images) -> EncodedImage:
    return _as_encoded(self.fns, self.params, images)

  def caption(self, image, length: str = "normal", stream: bool = False, **settings):
    out = caption(self.fns, self.params, self._tok(), image, length, stream=stream, **settings)
    return self._unwrap(out, self._single(image))

  def query(self, image=None, question=None, stream: bool = False, **settings):
    if question is None:
      raise InputError("question must be provided")
    single = (image is None or self._single(image)) and isinstance(question, str)
    out = query(self.fns, self.params, self._tok(), image, question, stream=stream, **settings)
    return self._unwrap(out, single)

  def detect(self, image, object: str, max_objects: int = G.DEFAULT_MAX_OBJECTS):
    out = detect(self.fns, self.params, self._tok(), image, object, max_objects)
    return self._unwrap(out, self._single(image) and isinstance(object, str))

  def point(self, image, object: str, max_objects: int = G.DEFAULT_MAX_OBJECTS):
    out = point(self.fns, self.params, self._tok(), image, object, max_objects)
    return self._unwrap(out, self._single(image) and isinstance(object, str))

