"""aajax.nn.lora: merged weights equal the unmerged forward; a torch LoRA-Linear reference; targets."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from aajax.decoder.model import TextDecoder
from aajax.errors import ConfigError
from aajax.nn import lora
from tests.aa_moondream.helpers import tiny_config, tiny_params
from tests.moondream import torch_reference as ref
from weights_convert.moondream import params_to_state


def randomized(tree, seed):
  """A LoRA tree with B non-zero too (a fresh one has B = 0 and would prove nothing)."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda x: jnp.asarray(rng.standard_normal(x.shape).astype(np.float32) * 0.2), tree)


def test_targets_are_the_four_decoder_layers_of_every_block():
  cfg, md, _ = tiny_params()
  paths = lora.target_paths(md["text"], cfg.lora_targets)
  n = cfg.moondream.text.n_layers
  assert len(paths) == 4 * n
  assert ("blocks_0", "attn", "qkv") in paths and ("blocks_2", "mlp", "fc2") in paths
  assert all(p[-1] != "lm_head" for p in paths)
  with pytest.raises(ConfigError, match="no Dense kernel"):
    lora.init_lora(md["text"], ["nothing_matches"], 4, jax.random.PRNGKey(0))
  with pytest.raises(ConfigError, match="regex"):
    lora.target_paths(md["text"], ["("])


def test_fresh_lora_is_the_identity_and_merge_equals_unmerged():
  cfg, md, _ = tiny_params()
  text = TextDecoder(cfg.moondream.text)
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 9, cfg.moondream.text.dim)), jnp.float32)
  fresh = lora.init_lora(md["text"], cfg.lora_targets, cfg.lora_rank, jax.random.PRNGKey(1))
  assert lora.num_params(fresh) == sum(x.size for x in jax.tree.leaves(fresh))
  base = text.apply({"params": md["text"]}, x, prefix_len=3)["hidden"]
  with lora.unmerged(fresh, cfg.lora_scale):
    same = text.apply({"params": md["text"]}, x, prefix_len=3)["hidden"]
  np.testing.assert_array_equal(same, base)   # B = 0

  trained = randomized(fresh, 2)
  with jax.default_matmul_precision("highest"):
    with lora.unmerged(trained, cfg.lora_scale):
      unmerged = text.apply({"params": md["text"]}, x, prefix_len=3)["hidden"]
    merged = text.apply({"params": lora.merge(md["text"], trained, cfg.lora_scale)}, x, prefix_len=3)["hidden"]
  assert float(jnp.abs(unmerged - base).max()) > 1e-2   # the adapters do something
  np.testing.assert_allclose(merged, unmerged, rtol=1e-5, atol=1e-5)


def test_unmerged_gradients_reach_only_the_low_rank_factors():
  cfg, md, _ = tiny_params()
  text = TextDecoder(cfg.moondream.text)
  x = jnp.ones((1, 4, cfg.moondream.text.dim))
  ab = randomized(lora.init_lora(md["text"], cfg.lora_targets, 2, jax.random.PRNGKey(1)), 3)

  def loss(ab):
    with lora.unmerged(ab, 1.0):
      return jnp.sum(text.apply({"params": md["text"]}, x)["hidden"] ** 2)

  grads = jax.grad(loss)(ab)
  assert jax.tree.structure(grads) == jax.tree.structure(ab)
  assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads))


def test_dense_with_lora_matches_a_torch_lora_linear():
  """peft's LoRA Linear: y = x W^T + b + scale * (x A^T) B^T, A [r, in], B [out, r]."""
  rng = np.random.default_rng(4)
  dense = nn.Dense(6, name="fc")
  x = rng.standard_normal((3, 5)).astype(np.float32)
  params = {"fc": dense.init(jax.random.PRNGKey(0), x)["params"]}
  ab = {"fc": {"a": rng.standard_normal((5, 2)).astype(np.float32), "b": rng.standard_normal((2, 6)).astype(np.float32)}}

  class Wrap(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.Dense(6, name="fc")(x)

  with jax.default_matmul_precision("highest"), lora.unmerged(ab, 0.5):
    got = Wrap().apply({"params": params}, x)
  w, b = torch.tensor(np.asarray(params["fc"]["kernel"]).T), torch.tensor(np.asarray(params["fc"]["bias"]))
  a_t, b_t = torch.tensor(ab["fc"]["a"].T), torch.tensor(ab["fc"]["b"].T)
  xt = torch.tensor(x)
  want = F.linear(xt, w, b) + 0.5 * F.linear(F.linear(xt, a_t), b_t)
  np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-6)


def test_merged_decoder_matches_the_torch_reference_decoder():
  cfg, md, _ = tiny_params()
  ab = randomized(lora.init_lora(md["text"], cfg.lora_targets, cfg.lora_rank, jax.random.PRNGKey(1)), 5)
  tc = cfg.moondream.text
  x = np.random.default_rng(6).standard_normal((1, 7, tc.dim)).astype(np.float32)
  with jax.default_matmul_precision("highest"), lora.unmerged(ab, cfg.lora_scale):
    got = TextDecoder(tc).apply({"params": md["text"]}, jnp.asarray(x), prefix_len=2)["hidden"]
  merged = {**md, "text": jax.tree.map(np.asarray, lora.merge(md["text"], ab, cfg.lora_scale))}
  state = params_to_state(merged, cfg.moondream)
  want = ref.text_hidden(state, tc, torch.tensor(x), prefix=2)
  np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-4)
  assert tiny_config() is cfg
