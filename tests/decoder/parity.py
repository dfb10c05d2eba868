"""Converted decoder vs the HF torch model: full-sequence logits, then a KV-cache greedy generation."""
import jax
import jax.numpy as jnp
import numpy as np

from aajax.decoder import kv_cache as kvc
from aajax.decoder.model import TextDecoder
from aajax.decoder.steps import DecoderSteps
from aajax.model_dir import load_model
from tests.decoder.hf_models import torch_logits


def relative_error(got, want) -> float:
  return float(np.abs(np.asarray(got) - want).max() / np.abs(want).max())


def jax_generation(model_dir, prompts, n_new):
  """(full no-cache logits [B, T, V], per-step cached logits [B, n_new, V], greedy tokens [B, n_new]).

  Prompts of different lengths share one right-padded batch, as generation runs them."""
  model, params = load_model(model_dir, expect_kind="decoder")
  cfg = model.cfg
  steps = DecoderSteps(cfg)
  b, t = len(prompts), max(map(len, prompts))
  tokens = np.zeros((b, t), np.int32)
  for i, p in enumerate(prompts):
    tokens[i, :len(p)] = p
  lengths = jnp.asarray([len(p) for p in prompts], jnp.int32)
  with jax.default_matmul_precision("highest"):
    embeds = steps.embed(params, jnp.asarray(tokens))
    hidden = model.apply({"params": params}, embeds)["hidden"]
    full = model.apply({"params": params}, hidden, method=TextDecoder.logits)
    cache = kvc.init_cache(cfg.n_layers, b, t + n_new, cfg.n_kv_heads, cfg.head_dim)
    out = steps.prefill(params, embeds, cache, lengths, 0)
    logits, picked = [out["logits"]], [jnp.argmax(out["logits"], -1).astype(jnp.int32)]
    zeros = jnp.zeros((b,), jnp.float32)
    for _ in range(n_new - 1):
      out = steps.decode_tokens(params, picked[-1], out["cache"], jax.random.key(0), zeros, zeros + 1.0)
      logits.append(out["logits"])
      picked.append(out["tokens"])
  return np.asarray(full), np.stack([np.asarray(l) for l in logits], 1), np.stack([np.asarray(p) for p in picked], 1)


def compare(torch_model, model_dir, prompts, n_new, rtol=1e-5):
  """Asserts parity and returns the worst relative errors {"prefill": ..., "decode": ...}."""
  full, step_logits, tokens = jax_generation(model_dir, prompts, n_new)
  errors = {"prefill": 0.0, "decode": 0.0}
  for i, prompt in enumerate(prompts):
    want_prompt = torch_logits(torch_model, prompt)
    errors["prefill"] = max(errors["prefill"], relative_error(full[i, :len(prompt)], want_prompt))
    want = torch_logits(torch_model, list(prompt) + list(tokens[i]))[len(prompt) - 1:len(prompt) - 1 + n_new]
    errors["decode"] = max(errors["decode"], relative_error(step_logits[i], want))
    np.testing.assert_array_equal(tokens[i], want.argmax(-1), err_msg=f"greedy tokens of row {i}")
  assert errors["prefill"] < rtol and errors["decode"] < rtol, errors
  return errors
