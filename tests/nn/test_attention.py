"""Softmax attention (plain and query-tiled) and grouped-query attention against torch SDPA in float64."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from aajax.decoder.model import grouped_attention
from aajax.nn import attention


def qkv(b, n_q, n_k, h, hd, seed=0, h_kv=None):
  rng = np.random.default_rng(seed)
  q = rng.standard_normal((b, n_q, h, hd)).astype(np.float32)
  k, v = (rng.standard_normal((b, n_k, h_kv or h, hd)).astype(np.float32) for _ in range(2))
  return q, k, v


def sdpa(q, k, v, mask=None):
  """torch reference in float64, [B, N, H, hd] layout in and out; mask [B, H, Q, K] (True = attend)."""
  t = lambda x: torch.from_numpy(np.asarray(x, np.float64)).permute(0, 2, 1, 3).requires_grad_()
  tq, tk, tv = t(q), t(k), t(v)
  m = None if mask is None else torch.from_numpy(np.array(mask))
  out = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, attn_mask=m).permute(0, 2, 1, 3)
  return out, (tq, tk, tv)


@pytest.fixture(params=["plain", "tiled"])
def path(request, monkeypatch):
  if request.param == "tiled":  # tiles of 16 rows over 37 queries: two full tiles and a padded one
    monkeypatch.setattr(attention, "TILE_MIN_SCORES", 0)
    monkeypatch.setattr(attention, "TILE_ROWS", 16)
  return request.param


def test_matches_sdpa_values_and_gradients(path):
  q, k, v = qkv(2, 37, 53, 3, 8)
  g = np.random.default_rng(1).standard_normal(q.shape[:3] + (8,)).astype(np.float32)
  with jax.default_matmul_precision("highest"):
    got = attention.softmax_attention(*map(jnp.asarray, (q, k, v)))
    grads = jax.grad(lambda *a: (attention.softmax_attention(*a) * g).sum(), argnums=(0, 1, 2))(q, k, v)
  want, leaves = sdpa(q, k, v)
  np.testing.assert_allclose(got, want.detach().numpy(), rtol=1e-5, atol=2e-6)
  (want * torch.from_numpy(g.astype(np.float64))).sum().backward()
  for mine, ref in zip(grads, leaves):
    np.testing.assert_allclose(mine, ref.grad.permute(0, 2, 1, 3).numpy(), rtol=1e-4, atol=1e-5)


def test_mask_and_fully_masked_rows():
  q, k, v = qkv(2, 5, 7, 2, 4)
  mask = np.random.default_rng(3).random((2, 1, 5, 7)) > 0.4
  mask[..., 0] = True
  with jax.default_matmul_precision("highest"):
    got = attention.softmax_attention(*map(jnp.asarray, (q, k, v)), mask=jnp.asarray(mask))
    blind = attention.softmax_attention(*map(jnp.asarray, (q, k, v)), mask=jnp.zeros((1, 1, 1, 7), bool))
  want, _ = sdpa(q, k, v, np.broadcast_to(mask, (2, 2, 5, 7)))
  np.testing.assert_allclose(got, want.detach().numpy(), rtol=1e-5, atol=2e-6)
  # a row that may see nothing averages every value, as a softmax over equal scores does
  np.testing.assert_allclose(blind, np.broadcast_to(v.mean(1, keepdims=True), q.shape), rtol=1e-5, atol=1e-6)


def test_bfloat16_in_float32_softmax_out_in_bfloat16(path):
  q, k, v = qkv(1, 37, 37, 2, 16)
  got = attention.softmax_attention(*(jnp.asarray(t, jnp.bfloat16) for t in (q, k, v)))
  assert got.dtype == jnp.bfloat16
  want, _ = sdpa(*(np.asarray(jnp.asarray(t, jnp.bfloat16), np.float32) for t in (q, k, v)))
  np.testing.assert_allclose(np.asarray(got, np.float32), want.detach().numpy(), atol=2e-2)


def test_grouped_query_attention_with_cache_mask():
  """8 query heads over 2 key heads; causal mask over a longer (cache) key axis."""
  b, t, s, h, h_kv, hd = 2, 3, 6, 8, 2, 4
  q, k, v = qkv(b, t, s, h, hd, h_kv=h_kv)
  pos = np.arange(s - t, s)
  mask = np.broadcast_to(np.arange(s)[None, None, :] <= pos[None, :, None], (b, t, s))
  with jax.default_matmul_precision("highest"):
    got = grouped_attention(*map(jnp.asarray, (q, k, v)), jnp.asarray(mask))
  rep = lambda x: np.repeat(x, h // h_kv, axis=2)  # query head i reads key head i // (h / h_kv)
  want, _ = sdpa(q, rep(k), rep(v), np.broadcast_to(mask[:, None], (b, h, t, s)))
  np.testing.assert_allclose(got, want.detach().numpy(), rtol=1e-5, atol=2e-6)
