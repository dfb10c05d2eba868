"""AA-Moondream's decoder LoRA (`aajax.nn.lora`, generic; its own tests are in tests/prefix_vlm):
the four adapted layers of every block, merged weights equal the unmerged forward, the merged
decoder equals the torch reference decoder, gradients reach only A and B."""
import jax
import jax.numpy as jnp
import numpy as np
import torch

from aajax.decoder.model import TextDecoder
from aajax.nn import lora
from tests.aa_moondream.helpers import tiny_params
from tests.moondream import torch_reference as ref
from weights_convert.moondream import params_to_state


def trained_lora(md, cfg, seed):
  """A LoRA tree with B non-zero too (a fresh one has B = 0 and would prove nothing)."""
  rng = np.random.default_rng(seed)
  fresh = lora.init_lora(jax.random.PRNGKey(1), md["text"], cfg.lora)
  return fresh, jax.tree.map(lambda x: jnp.asarray(rng.standard_normal(x.shape).astype(np.float32) * 0.2), fresh)


def test_targets_are_qkv_fc1_fc2_of_every_block():
  cfg, md, _ = tiny_params()
  paths = [p for p, _ in lora.target_paths(md["text"], cfg.lora)]
  assert len(paths) == 3 * cfg.moondream.text.n_layers
  assert ("blocks_0", "attn", "qkv") in paths and ("blocks_2", "mlp", "fc2") in paths
  assert ("blocks_0", "attn", "proj") not in paths and ("lm_head",) not in paths


def test_merge_equals_unmerged_and_the_torch_reference_decoder():
  cfg, md, _ = tiny_params()
  tc = cfg.moondream.text
  text = TextDecoder(tc)
  x = np.random.default_rng(0).standard_normal((2, 9, tc.dim)).astype(np.float32)
  fresh, ab = trained_lora(md, cfg, 2)
  apply = jax.jit(lambda p, x: text.apply({"params": p}, x, prefix_len=3)["hidden"])
  base = apply(md["text"], x)
  with lora.lora_applied(fresh, cfg.lora):
    same = jax.jit(lambda p, x: text.apply({"params": p}, x, prefix_len=3)["hidden"])(md["text"], x)
  np.testing.assert_array_equal(same, base)   # B = 0: the base model

  with jax.default_matmul_precision("highest"):
    with lora.lora_applied(ab, cfg.lora):
      unmerged = text.apply({"params": md["text"]}, x, prefix_len=3)["hidden"]
    merged_text = lora.merge(md["text"], ab, cfg.lora)
    merged = text.apply({"params": merged_text}, x, prefix_len=3)["hidden"]
  assert float(jnp.abs(unmerged - base).max()) > 1e-2   # the adapters do something
  np.testing.assert_allclose(merged, unmerged, rtol=1e-5, atol=1e-5)

  state = params_to_state({**md, "text": jax.tree.map(np.asarray, merged_text)}, cfg.moondream)
  want = ref.text_hidden(state, tc, torch.tensor(x), prefix=3)
  np.testing.assert_allclose(unmerged, want.numpy(), rtol=1e-4, atol=1e-4)


def test_unmerged_gradients_reach_only_the_low_rank_factors():
  cfg, md, _ = tiny_params()
  text = TextDecoder(cfg.moondream.text)
  x = jnp.ones((1, 4, cfg.moondream.text.dim))
  _, ab = trained_lora(md, cfg, 3)

  def loss(ab):
    with lora.lora_applied(ab, cfg.lora):
      return jnp.sum(text.apply({"params": md["text"]}, x)["hidden"] ** 2)

  grads = jax.jit(jax.grad(loss))(ab)
  assert jax.tree.structure(grads) == jax.tree.structure(ab)
  assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads))
