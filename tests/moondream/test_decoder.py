"""Text decoder parity: prefill, KV-cache decode, batching, MoE routing, against torch references."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from aajax.decoder import kv_cache as kvc
from aajax.decoder.moe import dense_experts, load_balancing_loss, ragged_experts, route, sorted_experts
from aajax.decoder.steps import DecoderSteps
from tests.moondream import torch_reference as ref
from tests.moondream.helpers import tiny_model

VARIANTS = {  # name -> tiny() overrides
    "dense": {},
    "gqa": {"n_kv_heads": 2},
    "moe_tau": {"moe": True, "tau": True},
}
PREFIX = 5


def close(a, b, tol=2e-5):
  b = b.detach().numpy() if isinstance(b, torch.Tensor) else b
  np.testing.assert_allclose(np.asarray(a), b, rtol=tol, atol=tol)


def reference(state, tc, x, prefix):
  with torch.no_grad():
    h = ref.text_hidden(state, tc, torch.from_numpy(np.asarray(x)), prefix)
    return h, ref.text_logits(state, h)


def setup(variant, batch=1, t=12, seed=1):
  cfg, params, state = tiny_model("tiny", 0, **VARIANTS[variant])
  x = np.random.default_rng(seed).standard_normal((batch, t, cfg.text.dim)).astype(np.float32)
  return cfg, params, state, x


def empty_cache(tc, batch, size):
  return kvc.init_cache(tc.n_layers, batch, size, tc.n_kv_heads, tc.head_dim)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_prefill_matches_reference(variant):
  cfg, params, state, x = setup(variant)
  steps = DecoderSteps(cfg.text)
  want_h, want_logits = reference(state, cfg.text, x, PREFIX)
  with jax.default_matmul_precision("highest"):
    out = steps.model.apply({"params": params["text"]}, x, empty_cache(cfg.text, 1, 16), PREFIX)
    logits = steps.model.apply({"params": params["text"]}, out["hidden"], method=steps.model.logits)
    no_cache = steps.model.apply({"params": params["text"]}, x, None, PREFIX)
  close(out["hidden"], want_h)
  close(logits, want_logits)
  close(no_cache["hidden"], want_h)
  assert int(out["cache"]["length"][0]) == x.shape[1]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_kv_cache_decode_equals_full_forward(variant):
  """Prefill 7 positions, then decode one at a time: every step equals the full forward."""
  cfg, params, state, x = setup(variant)
  steps = DecoderSteps(cfg.text)
  want_h, want_logits = reference(state, cfg.text, x, PREFIX)
  p = params["text"]
  with jax.default_matmul_precision("highest"):
    out = steps.prefill(p, x[:, :7], empty_cache(cfg.text, 1, 16), prefix_len=PREFIX)
    close(out["logits"], want_logits[:, 6])
    cache = out["cache"]
    for t in range(7, x.shape[1]):
      out = steps.decode(p, x[:, t], cache)
      cache = out["cache"]
      close(out["hidden"], want_h[:, t])
      close(out["logits"], want_logits[:, t])
  assert int(cache["length"][0]) == x.shape[1]


def test_batched_rows_with_padding_equal_single_rows():
  """Rows of different prompt lengths (right padded) and positions give their single-row results."""
  cfg, params, state, x = setup("moe_tau", batch=3)
  steps = DecoderSteps(cfg.text)
  p, lengths = params["text"], np.array([12, 8, 10], np.int32)
  with jax.default_matmul_precision("highest"):
    out = steps.prefill(p, x[:, :6], empty_cache(cfg.text, 3, 16), prefix_len=PREFIX)
    rest = np.zeros_like(x[:, 6:])
    for b in range(3):
      rest[b, :lengths[b] - 6] = x[b, 6:lengths[b]]
    out = steps.prefill(p, rest, out["cache"], jnp.asarray(lengths - 6))
    np.testing.assert_array_equal(np.asarray(out["cache"]["length"]), lengths)
    nxt = np.random.default_rng(5).standard_normal((3, cfg.text.dim)).astype(np.float32)
    dec = steps.decode(p, nxt, out["cache"], jnp.array([True, False, True]))
  np.testing.assert_array_equal(np.asarray(dec["cache"]["length"]), lengths + [1, 0, 1])
  for b in range(3):
    _, want_logits = reference(state, cfg.text, x[b:b + 1, :lengths[b]], PREFIX)
    close(out["logits"][b], want_logits[0, -1])
    if b != 1:
      seq = np.concatenate([x[b:b + 1, :lengths[b]], nxt[None, b:b + 1]], axis=1)
      _, want_logits = reference(state, cfg.text, seq, PREFIX)
      close(dec["logits"][b], want_logits[0, -1])


def test_cache_overflow_is_refused():
  from aajax.errors import InputError
  cfg, _, _, _ = setup("dense")
  cache = empty_cache(cfg.text, 1, 16)
  with pytest.raises(InputError, match="KV cache of 16"):
    kvc.check_room(cache, 17, cfg.text.max_context)
  with pytest.raises(InputError, match="context of 256"):
    kvc.check_room(kvc.resize_cache(cache, 300), 300, cfg.text.max_context)


@pytest.mark.parametrize("n_tokens", [1, 5, 37])
def test_moe_dispatch_paths_agree_with_loop(n_tokens):
  cfg, params, state, _ = setup("moe_tau")
  moe = cfg.text.moe
  blk = params["text"]["blocks_1"]["mlp"]
  x = np.random.default_rng(n_tokens).standard_normal((n_tokens, cfg.text.dim)).astype(np.float32)
  with torch.no_grad():
    want = ref.moe_loop(state, "text.blocks.1.mlp", torch.from_numpy(x)[None], moe)[0]
  with jax.default_matmul_precision("highest"):
    logits = x @ blk["router"]["kernel"] + blk["router"]["bias"]
    weights, ids = route(jnp.asarray(logits), moe.experts_per_token)
    for fn in (sorted_experts, ragged_experts, dense_experts):
      close(jax.jit(fn)(x, blk["fc1"], blk["fc2"], weights, ids), want)


def test_load_balancing_loss():
  n, e, k = 64, 8, 2
  uniform = jnp.zeros((n, e))
  ids = jnp.stack([jnp.arange(n) % e, (jnp.arange(n) + 1) % e], axis=1)
  np.testing.assert_allclose(load_balancing_loss(uniform, ids, e), 1.0, rtol=1e-6)
  skewed = jnp.zeros((n, e)).at[:, :2].set(5.0)
  assert float(load_balancing_loss(skewed, jnp.tile(jnp.array([0, 1]), (n, 1)), e)) > 3.0
  # padding rows do not count
  mask = jnp.arange(n) < n // 2
  np.testing.assert_allclose(load_balancing_loss(uniform, ids, e, mask), 1.0, rtol=1e-6)


def test_dense_decoder_matches_transformers_phi():
  """The dense decoder is Phi-1.5: same weights in PhiForCausalLM give the same causal logits,
  and greedy decoding with our KV cache gives HF generate's tokens."""
  from weights_convert.moondream_hf import phi_model
  cfg, params, state, _ = setup("dense")
  tc = cfg.text
  hf = phi_model(state, tc)
  tokens = np.random.default_rng(3).integers(0, tc.vocab_size, (2, 10))
  with torch.no_grad():
    want = hf(torch.from_numpy(tokens)).logits
    hf_gen = hf.generate(torch.from_numpy(tokens), max_new_tokens=4, do_sample=False)[:, 10:].numpy()
  steps = DecoderSteps(tc)
  p = params["text"]
  with jax.default_matmul_precision("highest"):
    emb = steps.embed(p, jnp.asarray(tokens, jnp.int32))
    out = steps.model.apply({"params": p}, emb, empty_cache(tc, 2, 16), 0)
    close(steps.model.apply({"params": p}, out["hidden"], method=steps.model.logits), want, 5e-5)
    first = steps.prefill(p, emb, empty_cache(tc, 2, 16))
    toks, cache, got = jnp.argmax(first["logits"], -1).astype(jnp.int32), first["cache"], []
    for _ in range(4):
      got.append(np.asarray(toks))
      o = steps.decode_tokens(p, toks, cache, jax.random.PRNGKey(0), 0.0, 1.0)
      toks, cache = o["tokens"], o["cache"]
  np.testing.assert_array_equal(np.stack(got, 1), hf_gen)
