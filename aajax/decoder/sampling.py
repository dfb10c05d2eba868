"""Next-token choice: greedy, or temperature + nucleus (top-p) sampling as the reference does it.

Reference rule: temperature 0 means argmax; otherwise p = softmax(logits / T), sort descending,
zero every entry whose *exclusive* cumulative sum (cumsum - p) exceeds top_p, renormalise, sample.
Temperature and top_p are per-row arrays, so one jitted step serves a batch of mixed settings.
The returned log-probability is that of the model's own distribution (temperature 1, banned ids
removed), the number users read as confidence.
"""
import jax
import jax.numpy as jnp

NEG_INF = -jnp.inf


def ban(logits, ids):
  """Set logits of the given token ids (a static tuple, may be empty) to -inf."""
  ids = tuple(i for i in ids if i is not None)
  if not ids:
    return logits
  return logits.at[..., jnp.asarray(ids)].set(NEG_INF)


def top_p_filter(probs, top_p):
  """probs [B, V], top_p [B] -> renormalised probs with the nucleus kept."""
  order = jnp.argsort(-probs, axis=-1)
  sorted_p = jnp.take_along_axis(probs, order, axis=-1)
  exclusive = jnp.cumsum(sorted_p, axis=-1) - sorted_p
  sorted_p = jnp.where(exclusive > top_p[:, None], 0.0, sorted_p)
  sorted_p = sorted_p / sorted_p.sum(-1, keepdims=True)
  inverse = jnp.argsort(order, axis=-1)
  return jnp.take_along_axis(sorted_p, inverse, axis=-1)


def sample(logits, rng, temperature, top_p):
  """logits [B, V] float32; temperature, top_p [B] -> (tokens [B] int32, logprobs [B])."""
  b = logits.shape[0]
  temperature = jnp.broadcast_to(jnp.asarray(temperature, jnp.float32), (b,))
  top_p = jnp.broadcast_to(jnp.asarray(top_p, jnp.float32), (b,))
  greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)

  def nucleus():
    safe_t = jnp.where(temperature > 0, temperature, 1.0)
    probs = top_p_filter(jax.nn.softmax(logits / safe_t[:, None], axis=-1), top_p)
    sampled = jax.random.categorical(rng, jnp.log(probs), axis=-1).astype(jnp.int32)
    return jnp.where(temperature > 0, sampled, greedy)

  # An all-greedy batch skips the two vocabulary-wide sorts of the nucleus: on a CPU they cost more
  # than a small decoder's whole step at batch 8.
  tokens = jax.lax.cond(jnp.any(temperature > 0), nucleus, lambda: greedy)
  logprobs = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), tokens[:, None], axis=-1)[:, 0]
  return tokens, logprobs
