"""Jitted pieces of the batching engine that the decoder steps do not have: moving KV-cache rows
between the running batch and newly prefilled prompts, and sampling with one RNG stream per row.

Per-row streams make a request's sampled tokens depend only on its own seed and step, never on
which other requests shared its batch: the same request gives the same text batched or alone.
"""
import functools

import jax
import jax.numpy as jnp

from aajax.decoder.sampling import ban, sample

MAX_TOP_LOGPROBS = 20


@functools.partial(jax.jit, donate_argnums=0)
def put_rows(cache, new, index):
  """Write the rows of `new` into `cache` at `index` [n]; an index past the end drops that row."""
  return jax.tree.map(lambda a, n: a.at[index].set(n.astype(a.dtype), mode="drop"), cache, new)


@jax.jit
def take_rows(cache, index):
  """A cache of len(index) rows: row i is cache[index[i]], or zeros where index[i] is past the end."""
  return jax.tree.map(lambda a: jnp.take(a, index, axis=0, mode="fill", fill_value=0), cache)


@functools.partial(jax.jit, static_argnames=("banned", "top_k"))
def sample_rows(logits, seeds, counters, temperature, top_p, banned=(), top_k=0):
  """logits [B, V]; seeds, counters [B] int32; temperature, top_p [B] ->
  (tokens [B], logprobs [B], top ids [B, top_k], top logprobs [B, top_k]).

  Row b draws with key fold_in(PRNGKey(seeds[b]), counters[b]); the log-probabilities are those of
  the model's own distribution with the banned ids removed (as `aajax.decoder.sampling.sample`)."""
  logits = ban(logits, banned)
  keys = jax.vmap(lambda s, c: jax.random.fold_in(jax.random.PRNGKey(s), c))(seeds, counters)
  tokens, logprobs = jax.vmap(lambda l, k, t, p: sample(l[None], k, t, p))(logits, keys, temperature, top_p)
  if top_k:
    top_lp, top_ids = jax.lax.top_k(jax.nn.log_softmax(logits, axis=-1), top_k)
  else:
    top_lp = top_ids = jnp.zeros((logits.shape[0], 0))
  return tokens[:, 0], logprobs[:, 0], top_ids, top_lp


def power_of_two_parts(n: int) -> list[int]:
  """n as a sum of distinct powers of two, largest first (13 -> [8, 4, 1]): batches of these sizes
  compile once each, and no row is padding."""
  return [1 << i for i in reversed(range(n.bit_length())) if n >> i & 1]


def next_power_of_two(n: int) -> int:
  return 1 << max(0, n - 1).bit_length()
