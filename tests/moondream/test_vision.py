"""Crop tiling, reconstruction, pooling and the vision tower against the reference's rules."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from aajax.errors import InputError
from aajax.vlm import crops as C
from aajax.vlm.config import get_config
from aajax.vlm.vision import VisionEncoder
from tests.moondream import torch_reference as ref
from tests.moondream.helpers import tiny_model

MD2 = get_config("moondream2").vision

# (H, W) -> tiling, from the reference note's worked examples
TILINGS = {(300, 200): (1, 1), (378, 378): (1, 1), (500, 500): (3, 3), (1000, 1000): (3, 3),
           (4000, 4000): (3, 3), (600, 800): (2, 4), (720, 1280): (2, 4), (1080, 1920): (2, 4),
           (3024, 4032): (2, 4), (800, 600): (4, 2), (400, 4000): (1, 9)}


@pytest.mark.parametrize("size", sorted(TILINGS))
def test_select_tiling_table(size):
  h, w = size
  got = C.select_tiling(h - 112, w - 112, 266, 12)
  assert got == TILINGS[size] == ref.select_tiling(h - 112, w - 112, 266, 12)


def test_select_tiling_agrees_with_reference_on_a_sweep():
  rng = np.random.default_rng(0)
  for h, w in rng.integers(1, 6000, (400, 2)):
    assert C.select_tiling(h, w, 266, 12) == ref.select_tiling(h, w, 266, 12)


@pytest.mark.parametrize("size,n_crops,grid", [((300, 200), 2, 27), ((500, 500), 10, 65), ((600, 800), 9, (46, 84)),
                                               ((400, 4000), 10, (27, 179))])
def test_overlap_crops_full_size(size, n_crops, grid):
  img = np.random.default_rng(1).integers(0, 255, size + (3,), dtype=np.uint8)
  crops, tiling = C.overlap_crop_image(img, MD2)
  assert crops.shape == (n_crops, 378, 378, 3)
  # the global crop is the whole image resized; the local crops are windows of the resized image
  from PIL import Image
  np.testing.assert_array_equal(crops[0], np.asarray(Image.fromarray(img).resize((378, 378), Image.Resampling.LANCZOS)))
  target = (tiling[1] * 266 + 112, tiling[0] * 266 + 112)
  big = np.asarray(Image.fromarray(img).resize(target, Image.Resampling.LANCZOS))
  np.testing.assert_array_equal(crops[-1], big[-378:, -378:])
  grid = grid if isinstance(grid, tuple) else (grid, grid)
  local = jnp.zeros((tiling[0] * tiling[1], 27, 27, 1))
  assert C.reconstruct_from_crops(local, tiling, 4).shape[:2] == grid


@pytest.mark.parametrize("tiling", [(1, 1), (2, 3), (3, 3), (1, 4), (4, 1)])
def test_reconstruct_matches_reference_tile_loop(tiling):
  n = tiling[0] * tiling[1]
  local = np.random.default_rng(2).standard_normal((n, 27, 27, 3)).astype(np.float32)
  want = ref.reconstruct_from_crops(torch.from_numpy(local), tiling, 4).numpy()
  np.testing.assert_array_equal(np.asarray(C.reconstruct_from_crops(jnp.asarray(local), tiling, 4)), want)


def test_reconstruction_keeps_a_bright_centre():
  """An image with a bright centre rectangle, cut into overlapping crops and stitched back, is itself."""
  th, tw, g, m = 2, 3, 27, 4
  full = np.zeros(((g - 2 * m) * th + 2 * m, (g - 2 * m) * tw + 2 * m), np.float32)
  full[20:30, 25:40] = 1.0
  tiles = np.stack([full[y * (g - 2 * m):y * (g - 2 * m) + g, x * (g - 2 * m):x * (g - 2 * m) + g]
                    for y in range(th) for x in range(tw)])[..., None]
  np.testing.assert_array_equal(np.asarray(C.reconstruct_from_crops(jnp.asarray(tiles), (th, tw), m))[..., 0], full)


@pytest.mark.parametrize("hw", [(27, 27), (46, 84), (65, 65), (84, 46), (27, 179), (30, 28)])
def test_adaptive_pool_matches_torch(hw):
  x = np.random.default_rng(3).standard_normal(hw + (5,)).astype(np.float32)
  want = F.adaptive_avg_pool2d(torch.from_numpy(x).permute(2, 0, 1), (27, 27)).permute(1, 2, 0).numpy()
  np.testing.assert_allclose(np.asarray(C.adaptive_avg_pool(jnp.asarray(x), 27)), want, rtol=1e-6, atol=1e-6)


def test_pool_windows_for_46():
  m = C.adaptive_pool_matrix(46, 27)
  windows = [tuple(np.nonzero(r)[0][[0, -1]] + [0, 1]) for r in m[:6]]
  assert windows == [(0, 2), (1, 4), (3, 6), (5, 7), (6, 9), (8, 11)]


def test_patchify_matches_reference_order():
  x = np.random.default_rng(4).standard_normal((2, 28, 28, 3)).astype(np.float32)
  from aajax.vlm.vision import patchify
  want = ref.create_patches(torch.from_numpy(x).permute(0, 3, 1, 2), 4).numpy()
  np.testing.assert_array_equal(np.asarray(patchify(jnp.asarray(x), 4)), want)


def test_vision_tower_and_projection_match_reference():
  cfg, params, state = tiny_model("tiny")
  vc = cfg.vision
  img = np.random.default_rng(5).integers(0, 255, (70, 90, 3), dtype=np.uint8)
  crops_u8, tiling = C.overlap_crop_image(img, vc)
  assert tiling != (1, 1)
  crops = C.normalize(crops_u8)
  enc = VisionEncoder(vc)
  with jax.default_matmul_precision("highest"):
    tokens = enc.apply({"params": params["vision"]}, crops, method=VisionEncoder.encode)
    local = tokens[1:].reshape(-1, vc.grid, vc.grid, vc.enc_dim)
    pooled = C.adaptive_avg_pool(C.reconstruct_from_crops(local, tiling, vc.overlap_margin), vc.grid)
    out = enc.apply({"params": params["vision"]}, tokens[0], pooled.reshape(vc.n_tokens, -1), method=VisionEncoder.project)
  with torch.no_grad():
    nchw = torch.from_numpy(crops).permute(0, 3, 1, 2)
    want_tokens = ref.vision_encoder(state, vc, nchw)
    want = ref.image_tokens(state, vc, nchw, tiling)
  np.testing.assert_allclose(np.asarray(tokens), want_tokens.numpy(), rtol=2e-5, atol=2e-5)
  np.testing.assert_allclose(np.asarray(out), want.numpy(), rtol=2e-5, atol=2e-5)


def test_vision_tower_matches_transformers_siglip():
  """Moondream's tower is a head-less SigLIP ViT: same weights in SiglipVisionModel, same tokens."""
  from weights_convert.moondream_hf import siglip_vision_model
  cfg, params, state = tiny_model("tiny")
  vc = cfg.vision
  crops = np.random.default_rng(8).uniform(-1, 1, (3, vc.crop_size, vc.crop_size, 3)).astype(np.float32)
  with torch.no_grad():
    want = siglip_vision_model(state, vc)(pixel_values=torch.from_numpy(crops).permute(0, 3, 1, 2)).last_hidden_state
  with jax.default_matmul_precision("highest"):
    got = VisionEncoder(vc).apply({"params": params["vision"]}, crops, method=VisionEncoder.encode)
  np.testing.assert_allclose(np.asarray(got), want.numpy(), rtol=2e-5, atol=2e-5)


def test_normalize_bf16_mimic():
  x = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
  f32, bf = C.normalize(x), C.normalize(x, mimic_bf16=True)
  assert f32.min() == -1 and f32.max() == 1
  assert 0 < np.abs(f32 - bf).max() < 1e-2
  t = torch.from_numpy(x).to(torch.bfloat16).div_(255.0).sub_(0.5).div_(0.5).float().numpy()
  np.testing.assert_array_equal(bf, t)


@pytest.mark.parametrize("mode", ["RGBA", "L", "P", "LA", "CMYK", "1"])
def test_to_rgb_pil_modes(mode):
  from PIL import Image
  im = Image.new(mode, (7, 5))
  assert C.to_rgb(im).shape == (5, 7, 3)


def test_to_rgb_16_bit_is_scaled_not_clipped():
  from PIL import Image
  a = (np.arange(20).reshape(4, 5) * 3000).astype(np.uint16)
  out = C.to_rgb(Image.fromarray(a))
  np.testing.assert_array_equal(out[..., 0], np.round(a / 257).astype(np.uint8))
  assert C.to_rgb(a.astype(np.float32) / a.max()).max() == 255


def test_to_rgb_rejects_bad_input():
  with pytest.raises(InputError):
    C.to_rgb(np.zeros((4, 4, 2), np.uint8))
  with pytest.raises(InputError):
    C.to_rgb("not an image")
  with pytest.raises(InputError, match="NaN"):
    C.to_rgb(np.full((4, 4), np.nan, np.float32))


@pytest.mark.parametrize("size", [(1, 1), (3, 2000), (5000, 7)])
def test_tiny_and_extreme_images_crop(size):
  crops, tiling = C.overlap_crop_image(np.zeros(size + (3,), np.uint8), MD2)
  assert crops.shape[1:] == (378, 378, 3) and len(crops) == 1 + tiling[0] * tiling[1] <= 13
