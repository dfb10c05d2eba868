"""Map post-processing against torch: reflect-padded gaussian blur, align_corners upsampling."""
import numpy as np
import pytest

from aajax.eval import maps as P

torch = pytest.importorskip("torch")
F = torch.nn.functional


def torch_blur(x, ksize, sigma):
  """kornia.filters.gaussian_blur2d(border_type='reflect') written out in torch."""
  g = torch.tensor(P.gaussian_kernel1d(ksize, sigma), dtype=torch.float64)
  k2 = (g[:, None] * g[None, :])[None, None]
  pad = ksize // 2
  return F.conv2d(F.pad(x[:, None], (pad, pad, pad, pad), mode="reflect"), k2)[:, 0]


@pytest.mark.parametrize("domain", ["Industrial", "Medical"])
def test_reference_pipeline_matches_torch(domain):
  ksize, sigma = P.GRID_BLUR[domain]
  rng = np.random.default_rng(0)
  levels = rng.normal(size=(4, 2, 37, 37))
  out = P.combine_levels(levels, 518, domain)
  ref = 0
  for lv in torch.from_numpy(levels):   # the reference's order: per level blur, upsample, sum
    ref = ref + F.interpolate(torch_blur(lv, ksize, sigma)[:, None], size=(518, 518),
                              mode="bilinear", align_corners=True)[:, 0]
  np.testing.assert_allclose(out, ref.numpy(), rtol=1e-10, atol=1e-10)


def test_works_under_jit_in_float32():
  import jax
  import jax.numpy as jnp
  x = np.random.default_rng(1).normal(size=(3, 2, 9, 9)).astype(np.float32)
  fn = jax.jit(lambda m: P.combine_levels(m, 20, "Industrial"))
  out = fn(jnp.asarray(x))
  assert out.shape == (2, 20, 20) and out.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(out), P.combine_levels(x.astype(np.float64), 20), atol=1e-5)


def test_gaussian_kernel_matches_kornia_definition():
  g = P.gaussian_kernel1d(7, 1.0)
  x = np.arange(7) - 3
  np.testing.assert_allclose(g, np.exp(-x ** 2 / 2) / np.exp(-x ** 2 / 2).sum())
  assert P.blur_matrix(5, 9, 1.5).sum(axis=1) == pytest.approx(np.ones(5))  # wider than signal


def test_image_scores_follow_the_domain_rule():
  map_max = np.array([1.0, 3.0, 2.0, 10.0, 20.0])
  det = np.array([0.2, 0.4, 0.3, 5.0, 7.0])
  cls = np.array([0, 0, 0, 1, 1])
  s = P.image_scores(map_max, det, cls, ["Industrial", "Medical"])
  np.testing.assert_allclose(s[:3], 0.5 * np.array([0, 1, 0.5]) + 0.5 * np.array([0, 1, 0.5]), atol=1e-6)
  np.testing.assert_allclose(s[3:], [0, 1])
  stats = P.minmax_by_class(np.ones((2, 3, 3)), [0, 0], 1)
  assert np.all(P.normalize(np.ones((2, 3, 3)), [0, 0], stats) == 0)  # constant class -> 0


def test_score_map_and_full_smoothing():
  logits = np.zeros((2, 4, 4, 2))
  logits[..., 1] = 1.0
  np.testing.assert_allclose(P.score_map(logits), 1.0)
  m = np.zeros((1, 31, 31), np.float32)
  m[0, 15, 15] = 1
  sm = P.smooth_full(m, 4.0)
  assert sm[0, 15, 15] < 0.02 and sm.sum() == pytest.approx(1.0, rel=1e-3)
