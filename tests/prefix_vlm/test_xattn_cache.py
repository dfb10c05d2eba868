"""The cross-attention baseline's cached generation (vision keys/values once, self-attention KV cache)
gives the uncached loop's tokens and the full-recomputation logits at every step, for each family."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aajax.captioning.xattn import XAttnCaptioner, greedy, greedy_cached
from aajax.decoder import kv_cache as kvc
from aajax.decoder.families import text_config
from aajax.encoders.config import ViTConfig


@pytest.mark.parametrize("family", ["phi", "llama", "gpt2"])
def test_cached_generation_equals_recomputation(family):
  vision = ViTConfig("siglip", 32, 1, 2, 64, 16, 32, pool="none")
  text = text_config(family, dim=32, ff_dim=48, n_layers=2, vocab_size=40, max_context=32, n_heads=4,
                     n_kv_heads=4 if family == "gpt2" else 2, rotary_dim=8)
  model = XAttnCaptioner(vision, text)
  images = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  params = model.init(jax.random.key(1), images, jnp.zeros((1, 2), jnp.int32))["params"]
  params = jax.tree.map(lambda p: p * 3.0, params)   # spread the logits: no near-ties for argmax
  n = 7
  with jax.default_matmul_precision("highest"):
    cached = jax.jit(greedy_cached, static_argnums=(0, 3, 4))(model, params, images, n, 1)
    uncached = jax.jit(greedy, static_argnums=(0, 3, 4))(model, params, images, n, 1)
    np.testing.assert_array_equal(np.asarray(cached), np.asarray(uncached))
    # step logits of the cache == logits of the whole sequence recomputed
    context = model.apply({"params": params}, images, method=XAttnCaptioner.encode)
    seq = jnp.concatenate([jnp.ones((2, 1), jnp.int32), cached[:, :-1]], 1)
    full = model.apply({"params": params}, context, seq, method=XAttnCaptioner.decode)
    ckv = model.apply({"params": params}, context, method=XAttnCaptioner.context_kv)
    step = jax.jit(lambda c, t: model.apply({"params": params}, ckv, t, c, method=XAttnCaptioner.decode_cached))
    cache = kvc.init_cache(text.n_layers, 2, n, text.n_kv_heads, text.head_dim)
    for i in range(n):
      logits, cache = step(cache, seq[:, i:i + 1])
      want = np.asarray(full[:, i])
      np.testing.assert_allclose(np.asarray(logits[:, 0]), want, rtol=0, atol=1e-5 * np.abs(want).max())
  assert len(set(np.asarray(cached).ravel().tolist())) > 1
