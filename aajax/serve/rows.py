"""The engine's device programs, each one jitted call per use:

  step(text_params, cache, tokens, active, seeds, counters, temperature, top_p)
      embed the fed tokens -> one decoder step for all W rows -> sample each row's next token
  prefill(text_params, prefixes, tokens, lengths, seeds, temperature, top_p)
      new rows' prefix caches (an encoded image, or empty) padded to the engine's slots -> prompt
      prefill -> first tokens sampled
  put_rows(cache, new, rows) / take_rows(cache, index)
      move rows into the running cache / resize it

Fusing the small pieces matters: a decode step of a small model is shorter than a few dispatches
and host round trips. The programs reuse the decoder's jitted steps (inlined) and donate the running
cache, so XLA updates it in place. The prefill does not see the running cache, so it compiles per
(rows, prompt bucket) only, not also per running-batch width.

Sampling has one RNG stream per row, fold_in(PRNGKey(seed), counter): a request's tokens depend
on its own seed and step, never on which requests shared its batch.
"""
import jax
import jax.numpy as jnp

from aajax.decoder.sampling import ban, sample
from aajax.vlm.runtime import MoondreamFns

MAX_TOP_LOGPROBS = 20


def sample_rows(logits, seeds, counters, temperature, top_p, banned=(), top_k=0):
  """logits [B, V]; seeds, counters [B] int32; temperature, top_p [B] ->
  (tokens [B], logprobs [B], top ids [B, top_k], top logprobs [B, top_k]).

  The log-probabilities are those of the model's own distribution with the banned ids removed
  (as `aajax.decoder.sampling.sample`)."""
  logits = ban(logits, banned)

  def sampled(_):
    keys = jax.vmap(lambda s, c: jax.random.fold_in(jax.random.PRNGKey(s), c))(seeds, counters)
    tokens, logprobs = jax.vmap(lambda l, k, t, p: sample(l[None], k, t, p))(logits, keys, temperature, top_p)
    return tokens[:, 0], logprobs[:, 0]

  def greedy(_):  # the same result for all-greedy batches, without the per-row sorts of top-p
    tokens = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return tokens, jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), tokens[:, None], axis=-1)[:, 0]

  tokens, logprobs = jax.lax.cond(jnp.any(temperature > 0), sampled, greedy, None)
  if top_k:
    top_lp, top_ids = jax.lax.top_k(jax.nn.log_softmax(logits, axis=-1), top_k)
  else:
    top_lp = top_ids = jnp.zeros((logits.shape[0], 0))
  return tokens, logprobs, top_ids, top_lp


def _pad_slots(cache, size: int):
  pad = lambda a: jnp.pad(a, ((0, 0), (0, size - a.shape[1]), (0, 0), (0, 0)))
  return {"k": tuple(map(pad, cache["k"])), "v": tuple(map(pad, cache["v"])), "length": cache["length"]}


class EnginePrograms:
  def __init__(self, fns: MoondreamFns, context: int):
    self.fns, self.context = fns, context
    self.step = jax.jit(self._step, donate_argnums=1, static_argnames=("banned", "top_k"))
    self.prefill = jax.jit(self._prefill, static_argnames=("top_k",))
    self.put_rows = jax.jit(self._put_rows, donate_argnums=0)
    self.take_rows = jax.jit(self._take_rows)

  def _step(self, params, cache, tokens, active, seeds, counters, temperature, top_p, banned=(), top_k=0):
    steps = self.fns.steps
    out = steps.decode(params, steps.embed(params, tokens), cache, active)
    return (out["cache"],) + sample_rows(out["logits"], seeds, counters, temperature, top_p, banned, top_k)

  def _prefill(self, params, prefixes, tokens, lengths, seeds, temperature, top_p, top_k=0):
    """prefixes: a list of n one-row caches of equal slot count (an encoded image, or empty)."""
    steps = self.fns.steps
    group = jax.tree.map(lambda *a: jnp.concatenate(a, axis=0), *prefixes) if len(prefixes) > 1 else prefixes[0]
    out = steps.prefill(params, steps.embed(params, tokens), _pad_slots(group, self.context), lengths)
    return (out["cache"],) + sample_rows(out["logits"], seeds, jnp.zeros_like(seeds), temperature, top_p, (), top_k)

  @staticmethod
  def _put_rows(cache, new, rows):
    """Write the rows of `new` into `cache` at `rows`."""
    return jax.tree.map(lambda a, n: a.at[rows].set(n.astype(a.dtype)), cache, new)

  @staticmethod
  def _take_rows(cache, index):
    """A cache of len(index) rows: row i is cache[index[i]], or zeros where index[i] is past the end."""
    return jax.tree.map(lambda a: jnp.take(a, index, axis=0, mode="fill", fill_value=0), cache)


def power_of_two_parts(n: int) -> list[int]:
  """n as a sum of distinct powers of two, largest first (13 -> [8, 4, 1]): batches of these sizes
  compile once each, and no row is padding."""
  return [1 << i for i in reversed(range(n.bit_length())) if n >> i & 1]


def next_power_of_two(n: int) -> int:
  return 1 << max(0, n - 1).bit_length()

