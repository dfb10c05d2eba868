"""Prefill and decode as separate jitted functions over (params, inputs, cache).

    steps = DecoderSteps(text_config)
    out = steps.prefill(text_params, embeds, cache, lengths, prefix_len)    # many tokens per row
    out = steps.decode(text_params, embeds, cache, active)                  # one embedding per row
    out = steps.decode_tokens(text_params, tokens, cache, rng, temperature, top_p, active, banned=())

Each returns {"logits" [B, V] float32 of the last real token, "hidden" [B, dim] its raw hidden
(before post_ln, for the region heads), "cache"}; `decode_tokens` also samples the next token
(and its log-probability); it reuses the compiled `decode`, so a generation compiles the decoder twice
only (prefill per prompt bucket, decode per cache size), whatever it feeds back. The cache argument is donated: XLA updates
it in place, and the caller must use the returned cache. Rows with `active` False do not advance
(finished rows of a batch keep their position while the others go on).

Compilation is keyed on shapes only: prompt lengths are bucketed by the caller (right padding +
`lengths`), and the cache size is fixed per generation.
"""
import functools

import jax
import jax.numpy as jnp

from aajax.decoder.model import TextDecoder
from aajax.decoder.sampling import ban, sample
from aajax.vlm.config import TextConfig


class DecoderSteps:
  def __init__(self, cfg: TextConfig):
    self.cfg = cfg
    self.model = TextDecoder(cfg)
    self.prefill = jax.jit(self._prefill, donate_argnames=("cache",))
    self.decode = jax.jit(self._decode, donate_argnames=("cache",))
    self.embed = jax.jit(self._embed)
    self.sample = jax.jit(self._sample, static_argnames=("banned",))

  def _embed(self, params, tokens):
    return self.model.apply({"params": params}, tokens, method=TextDecoder.embed)

  def _run(self, params, embeds, cache, lengths, prefix_len):
    out = self.model.apply({"params": params}, embeds, cache, prefix_len, lengths)
    rows = jnp.arange(embeds.shape[0])
    last = out["hidden"][rows, jnp.maximum(lengths - 1, 0)]
    logits = self.model.apply({"params": params}, last, method=TextDecoder.logits)
    return {"logits": logits, "hidden": last, "cache": out["cache"]}

  def _prefill(self, params, embeds, cache, lengths=None, prefix_len=0):
    """embeds [B, T, dim] (right padded), lengths [B] real tokens per row."""
    if lengths is None:
      lengths = jnp.full((embeds.shape[0],), embeds.shape[1], jnp.int32)
    return self._run(params, embeds, cache, lengths.astype(jnp.int32), jnp.asarray(prefix_len, jnp.int32))

  def _decode(self, params, embeds, cache, active=None):
    """embeds [B, dim]: one new position per active row."""
    b = embeds.shape[0]
    active = jnp.ones((b,), bool) if active is None else active
    return self._run(params, embeds[:, None], cache, active.astype(jnp.int32), jnp.int32(0))

  @staticmethod
  def _sample(logits, rng, temperature, top_p, banned=()):
    logits = ban(logits, banned)
    tokens, logprobs = sample(logits, rng, temperature, top_p)
    return logits, tokens, logprobs

  def decode_tokens(self, params, tokens, cache, rng, temperature, top_p, active=None, banned=()):
    """Embed -> decode -> ban + sample, as three compiled calls: the decoder program is the one
    `decode` uses (every caller feeding embeddings shares it), the other two are tiny."""
    out = self.decode(params, self.embed(params, tokens), cache, active)
    out["logits"], out["tokens"], out["logprobs"] = self.sample(out["logits"], rng, temperature, top_p, banned=banned)
    return out


@functools.lru_cache(maxsize=8)
def steps_for(cfg: TextConfig) -> DecoderSteps:
  """One DecoderSteps (and so one set of compiled functions) per config."""
  return DecoderSteps(cfg)
