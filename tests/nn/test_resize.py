"""resize_2d reproduces torch.nn.functional.interpolate for every mode it claims."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from aajax.nn.resize import resize_2d

TORCH_ARGS = {
    "bilinear": dict(mode="bilinear", align_corners=False),
    "bilinear_corners": dict(mode="bilinear", align_corners=True),
    "bicubic": dict(mode="bicubic", align_corners=False),
    "bicubic_aa": dict(mode="bicubic", align_corners=False, antialias=True),
    "bilinear_aa": dict(mode="bilinear", align_corners=False, antialias=True),
}


@pytest.mark.parametrize("mode", sorted(TORCH_ARGS))
@pytest.mark.parametrize("src,dst", [((24, 24), (37, 37)), ((27, 27), (16, 16)), ((14, 14), (37, 37)),
                                     ((37, 37), (518, 518)), ((5, 7), (11, 3)), ((9, 9), (9, 9))])
def test_matches_torch_interpolate(mode, src, dst):
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, *src, 3)).astype(np.float32)
  want = F.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size=dst, **TORCH_ARGS[mode])
  want = want.permute(0, 2, 3, 1).numpy()
  got = np.asarray(resize_2d(x, dst, mode))
  np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5)


def test_jax_and_numpy_inputs_agree():
  import jax.numpy as jnp
  x = np.random.default_rng(1).standard_normal((1, 6, 6, 2)).astype(np.float32)
  np.testing.assert_allclose(np.asarray(resize_2d(jnp.asarray(x), (10, 10), "bicubic_aa")),
                             resize_2d(x, (10, 10), "bicubic_aa"), atol=1e-6)


def test_unknown_mode_is_named():
  with pytest.raises(ValueError, match="unknown resize mode 'nearest-exact'"):
    resize_2d(np.zeros((1, 4, 4, 1), np.float32), (8, 8), "nearest-exact")
