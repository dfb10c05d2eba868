"""LoRA math against a torch reference of PEFT's lora.Linear, and merged == unmerged."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from aajax.decoder.model import TextDecoder
from aajax.errors import ConfigError
from aajax.nn import lora as lora_lib
from aajax.vlm.config import TextConfig


class TorchLoraLinear(torch.nn.Module):
  """PEFT's forward: base(x) + lora_B(lora_A(dropout(x))) * alpha / r."""

  def __init__(self, fan_in, fan_out, r, alpha):
    super().__init__()
    self.base = torch.nn.Linear(fan_in, fan_out)
    self.lora_A = torch.nn.Linear(fan_in, r, bias=False)
    self.lora_B = torch.nn.Linear(r, fan_out, bias=False)
    self.scaling = alpha / r

  def forward(self, x):
    return self.base(x) + self.lora_B(self.lora_A(x)) * self.scaling


def tiny_decoder():
  cfg = TextConfig(dim=32, ff_dim=64, n_layers=2, vocab_size=40, n_heads=4, n_kv_heads=2, rotary_dim=4)
  model = TextDecoder(cfg)
  x = jax.random.normal(jax.random.key(0), (2, 6, 32))
  return model, model.init(jax.random.key(1), x)["params"], x


def randomised(lora, seed=3):
  """Non-zero B (it starts at zero) so the adapters change the output."""
  leaves, tree = jax.tree.flatten(lora)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(tree, [0.3 * jax.random.normal(k, l.shape) for k, l in zip(keys, leaves)])


def test_dense_lora_matches_torch_reference():
  import flax.linen as nn
  cfg = lora_lib.LoraConfig(rank=4, alpha=12.0, targets=("^layer$",))
  dense = nn.Dense(24)
  x = np.random.default_rng(0).normal(size=(3, 5, 16)).astype(np.float32)
  params = dense.init(jax.random.key(0), x)["params"]
  lora = randomised(lora_lib.init_lora(jax.random.key(1), {"layer": params}, cfg))["layer"]
  ref = TorchLoraLinear(16, 24, 4, 12.0)
  with torch.no_grad():
    ref.base.weight.copy_(torch.from_numpy(np.array(params["kernel"]).T))
    ref.base.bias.copy_(torch.from_numpy(np.array(params["bias"])))
    ref.lora_A.weight.copy_(torch.from_numpy(np.array(lora["a"]).T))
    ref.lora_B.weight.copy_(torch.from_numpy(np.array(lora["b"]).T))
    want = ref(torch.from_numpy(x)).numpy()
  with jax.default_matmul_precision("highest"):
    with lora_lib.lora_applied(lora, cfg):   # a dict with "a" at the root: the top-level Dense
      got = dense.apply({"params": params}, x)
    merged = dense.apply({"params": lora_lib.merge(params, lora, cfg)}, x)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(merged), want, rtol=1e-5, atol=1e-5)


def test_init_follows_peft_and_starts_at_the_base_model():
  model, params, x = tiny_decoder()
  cfg = lora_lib.LoraConfig(rank=4, alpha=8.0)
  lora = lora_lib.init_lora(jax.random.key(2), params, cfg)
  assert lora_lib.adapter_paths(lora) == [(f"blocks_{i}", "attn", n) for i in range(2) for n in ("proj", "qkv")]
  a = np.asarray(lora["blocks_0"]["attn"]["qkv"]["a"])
  assert a.shape == (32, 4) and np.abs(a).max() <= 32 ** -0.5 and not np.any(lora["blocks_0"]["attn"]["qkv"]["b"])
  with lora_lib.lora_applied(lora, cfg):
    with_adapters = model.apply({"params": params}, x)["hidden"]
  np.testing.assert_array_equal(np.asarray(with_adapters), np.asarray(model.apply({"params": params}, x)["hidden"]))


def test_merged_equals_unmerged_on_the_decoder():
  model, params, x = tiny_decoder()
  cfg = lora_lib.LoraConfig(rank=4, alpha=8.0, targets=(r"attn/(qkv|proj)$", r"mlp/fc[12]$"))
  lora = randomised(lora_lib.init_lora(jax.random.key(2), params, cfg))
  with jax.default_matmul_precision("highest"):
    with lora_lib.lora_applied(lora, cfg):
      unmerged = model.apply({"params": params}, x)["hidden"]
    merged = model.apply({"params": lora_lib.merge(params, lora, cfg)}, x)["hidden"]
    base = model.apply({"params": params}, x)["hidden"]
  assert float(jnp.abs(unmerged - base).max()) > 1e-2
  # Merging W + BA rounds differently from adding x@BA: float32 rounding of the largest hidden values
  scale = float(jnp.abs(unmerged).max())
  np.testing.assert_allclose(np.asarray(merged), np.asarray(unmerged), rtol=1e-5, atol=2e-6 * scale)


def test_dropout_only_in_the_adapter_path_and_reproducible():
  model, params, x = tiny_decoder()
  cfg = lora_lib.LoraConfig(rank=4, alpha=8.0, dropout=0.5)
  lora = randomised(lora_lib.init_lora(jax.random.key(2), params, cfg))
  run = lambda rng: _apply(model, params, lora, cfg, x, rng)
  a, b, c = run(jax.random.key(5)), run(jax.random.key(5)), run(jax.random.key(6))
  np.testing.assert_array_equal(a, b)
  assert np.abs(a - c).max() > 0
  zero_b = jax.tree.map(lambda t: t * 0, lora)   # no adapter contribution: dropout changes nothing
  np.testing.assert_array_equal(_apply(model, params, zero_b, cfg, x, jax.random.key(5)),
                                np.asarray(model.apply({"params": params}, x)["hidden"]))


def _apply(model, params, lora, cfg, x, rng):
  with lora_lib.lora_applied(lora, cfg, rng):
    return np.asarray(model.apply({"params": params}, x)["hidden"])


def test_bad_targets_are_clear_errors():
  _, params, _ = tiny_decoder()
  with pytest.raises(ConfigError, match="match no Dense layer"):
    lora_lib.init_lora(jax.random.key(0), params, lora_lib.LoraConfig(targets=("nothing_here",)))
  with pytest.raises(ConfigError, match="bad LoRA target regex"):
    lora_lib.init_lora(jax.random.key(0), params, lora_lib.LoraConfig(targets=("(",)))
