"""Next-token choice: greedy rows take the argmax (an all-greedy batch skips the nucleus), sampled
rows are seeded and stay inside the nucleus, log-probabilities are the model's own."""
import jax
import jax.numpy as jnp
import numpy as np

from aajax.decoder.sampling import sample


def logits(b=4, v=50, seed=0):
  return jnp.asarray(np.random.default_rng(seed).standard_normal((b, v)).astype(np.float32) * 3)


def test_all_greedy_is_the_argmax_with_model_logprobs():
  lg = logits()
  tokens, lp = jax.jit(sample)(lg, jax.random.PRNGKey(0), 0.0, 1.0)
  np.testing.assert_array_equal(tokens, np.argmax(lg, -1))
  np.testing.assert_allclose(lp, np.max(jax.nn.log_softmax(lg, -1), -1), rtol=1e-6)


def test_mixed_batch_samples_only_the_warm_rows():
  lg = logits(b=6, seed=1)
  t = jnp.asarray([0.0, 1.0, 0.0, 1.0, 1.0, 0.0])
  top_p = jnp.asarray([1.0, 1.0, 1.0, 1e-6, 0.5, 1.0])
  fn = jax.jit(sample)
  a, _ = fn(lg, jax.random.PRNGKey(3), t, top_p)
  b, _ = fn(lg, jax.random.PRNGKey(3), t, top_p)
  np.testing.assert_array_equal(a, b)   # seeded
  greedy = np.argmax(np.asarray(lg), -1)
  np.testing.assert_array_equal(np.asarray(a)[[0, 2, 5]], greedy[[0, 2, 5]])
  assert int(a[3]) == greedy[3]   # a nucleus of one token
  draws = np.stack([np.asarray(fn(lg, jax.random.PRNGKey(k), t, top_p)[0]) for k in range(40)])
  assert len(set(draws[:, 1])) > 1   # top_p 1 at temperature 1 does sample
  p = np.asarray(jax.nn.softmax(lg[4]))
  order = np.argsort(-p)
  nucleus = set(order[:np.searchsorted(np.cumsum(p[order]) - p[order], 0.5, side="right")])
  assert set(draws[:, 4]) <= nucleus
