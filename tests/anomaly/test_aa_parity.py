"""AA model, DPAM, text anchors and losses against the PyTorch reference with the same weights.

Tolerance: fp32, rtol 1e-5 / atol 2e-5 on unit-normalised features, 1e-4 on 100x-scaled logits.
"""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from aajax.anomaly import losses
from aajax.anomaly.config import AAConfig
from aajax.anomaly.model import AAModel
from aajax.encoders.config import clip, siglip
from aajax.model_dir import load_model, save_model
from tests.anomaly import torch_reference as ref
from tests.encoders.test_tiny_parity import convert
from tests.encoders.torch_models import random_hf_model
from weights_convert import aaclip

BACKBONES = {
    "siglip": siglip(64, 4, 4, 128, 8, 32, text_len=12, vocab=99),
    "clip_gelu": clip(64, 4, 4, 8, 32, 48, 2, 4, 40, act="gelu", vocab=99, text_len=12),
}


def aa_config(name, **kw):
  kw = {"image_size": 48, "levels": (1, 2, 3, 4), "image_adapt_until": 2, "text_adapt_until": 1,
        "dpam_from": 2, **kw}
  return AAConfig(BACKBONES[name], **kw)


def build(cfg, tmp_path, seed=0):
  """Torch reference + aajax model with the same weights, through the released checkpoint files."""
  hf = random_hf_model(cfg.backbone, seed=seed)
  torch.manual_seed(seed + 1)
  ref_model = ref.TorchAA(hf, cfg).eval()
  _, backbone_params = convert(cfg.backbone, hf)
  save_model(tmp_path / "backbone", "two_tower", cfg.backbone.to_dict(), backbone_params)
  text = {"epoch": 1, "text_adapter": ref_model.text_adapter.state_dict()}
  if cfg.cross_attention:
    text["text_cross_attn"] = ref_model.text_cross_attn.state_dict()
  torch.save(text, tmp_path / "text_adapter.pth")
  torch.save({"epoch": 3, "image_adapter": ref_model.image_adapter.state_dict()}, tmp_path / "image_adapter_3.pth")
  args = ["--backbone", str(tmp_path / "backbone"), "--text_adapter", str(tmp_path / "text_adapter.pth"),
          "--image_adapter", str(tmp_path / "image_adapter_3.pth"), "--dst", str(tmp_path / "aa"),
          "--image_size", str(cfg.image_size), "--levels", ",".join(map(str, cfg.levels))]
  args += ["--relu"] if cfg.projector_relu else []
  if cfg.cross_attention:
    args += ["--cross_attention", "--cross_attn_heads", str(cfg.cross_attn_heads), "--cross_attn_level", str(cfg.cross_attn_level)]
  assert aaclip.main(args) == 0
  model, params = load_model(str(tmp_path / "aa"), expect_kind="aa")
  assert (model.cfg.text_adapt_until, model.cfg.image_adapt_until) == (cfg.text_adapt_until, cfg.image_adapt_until)
  return ref_model, AAModel(cfg), params  # dpam and cross-attention settings are the test's


def images_for(cfg, batch=2, seed=0):
  return np.random.default_rng(seed).standard_normal((batch, cfg.image_size, cfg.image_size, 3)).astype(np.float32)


def ids_for(cfg, shape, seed=0):
  ids = np.random.default_rng(seed).integers(3, cfg.backbone.text.vocab_size - 3, shape).astype(np.int64)
  if cfg.backbone.family == "clip":
    ids[..., 6] = cfg.backbone.text.vocab_size - 1
    ids[..., 7:] = 0
  return ids


def close(a, b, atol=2e-5, rtol=1e-5):
  np.testing.assert_allclose(np.asarray(a), b.detach().numpy(), rtol=rtol, atol=atol)


@pytest.mark.parametrize("name", sorted(BACKBONES))
@pytest.mark.parametrize("relu", [False, True])
def test_image_features_match_reference(name, relu, tmp_path):
  cfg = aa_config(name, projector_relu=relu)
  ref_model, model, params = build(cfg, tmp_path)
  images = images_for(cfg)
  with torch.no_grad():
    seg, det = ref_model.image_features(torch.from_numpy(images).permute(0, 3, 1, 2))
  with jax.default_matmul_precision("highest"):
    out = model.apply({"params": params}, images, method=AAModel.image_features)
  for a, b in zip(out["seg"], seg):
    close(a, b)
  close(out["det"], det)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_text_anchors_match_reference(name, tmp_path):
  cfg = aa_config(name)
  ref_model, model, params = build(cfg, tmp_path)
  ids = ids_for(cfg, (3, 5, cfg.backbone.text.max_len))
  with torch.no_grad():
    want = ref_model.anchors(torch.from_numpy(ids), 2)
  with jax.default_matmul_precision("highest"):
    got = model.apply({"params": params}, ids.astype(np.int32), 2, method=AAModel.text_anchors)
  close(got, want)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_cross_attention_variant_matches_reference(name, tmp_path):
  cfg = aa_config(name, cross_attention=True, cross_attn_heads=4, cross_attn_level=2)
  ref_model, model, params = build(cfg, tmp_path)
  with torch.no_grad():  # a non-zero output projection, so the attention path is really compared
    for p in ref_model.text_cross_attn.parameters():
      p.normal_(0, 0.2)
  torch.save({"text_adapter": ref_model.text_adapter.state_dict(),
              "text_cross_attn": ref_model.text_cross_attn.state_dict()}, tmp_path / "text_adapter.pth")
  flat = aaclip.adapter_params(cfg, _shapes(cfg), text_file=str(tmp_path / "text_adapter.pth"))
  params = _merge(params, flat)
  images = images_for(cfg, batch=2)
  ids = ids_for(cfg, (2, 4, cfg.backbone.text.max_len))
  with jax.default_matmul_precision("highest"):
    inputs = model.apply({"params": params}, images, method=AAModel.stage1_image_inputs)
    got = model.apply({"params": params}, ids.astype(np.int32), 2, inputs["context"], method=AAModel.text_anchors)
  with torch.no_grad():
    context = torch.from_numpy(np.array(inputs["context"]))
    want = ref_model.anchors(torch.from_numpy(ids), 2, context)
  close(got, want)


@pytest.mark.parametrize("name", sorted(BACKBONES))
@pytest.mark.parametrize("mode", ["vv", "vv_batch", "value", "off"])
def test_stage1_surgery_features_match_reference(name, mode, tmp_path):
  cfg = aa_config(name, dpam_mode=mode)
  ref_model, model, params = build(cfg, tmp_path)
  images = images_for(cfg, batch=3)
  with torch.no_grad():
    want = ref_model.surgery_levels(torch.from_numpy(images).permute(0, 3, 1, 2), "vv" if mode == "value" else mode)
  if mode == "value":  # "value" is the released code at batch size 1: compare image by image
    with torch.no_grad():
      want = [torch.cat(t) for t in zip(*[ref_model.surgery_levels(torch.from_numpy(images[i:i + 1]).permute(0, 3, 1, 2), "vv_batch")
                                           for i in range(3)])]
  with jax.default_matmul_precision("highest"):
    got = model.apply({"params": params}, images, method=AAModel.stage1_image_inputs)["levels"]
  for a, b in zip(got, want):
    close(a, b)


def test_batch_axis_dpam_mixes_images_and_intended_does_not(tmp_path):
  cfg = aa_config("clip_gelu", dpam_mode="vv_batch")
  _, model, params = build(cfg, tmp_path)
  images = images_for(cfg, batch=2)
  other = images.copy()
  other[1] = images_for(cfg, batch=1, seed=5)[0]
  for mode, mixes in (("vv_batch", True), ("vv", False)):
    m = AAModel(cfg.replace(dpam_mode=mode))
    a = m.apply({"params": params}, images, method=AAModel.stage1_image_inputs)["levels"][-1][0]
    b = m.apply({"params": params}, other, method=AAModel.stage1_image_inputs)["levels"][-1][0]
    assert (float(jnp.abs(a - b).max()) > 1e-3) == mixes, mode


def test_losses_and_maps_match_reference():
  rng = np.random.default_rng(0)
  b, g, size = 3, 6, 20
  feats = rng.standard_normal((b, g * g, 8)).astype(np.float32)
  feats /= np.linalg.norm(feats, axis=-1, keepdims=True)
  anchors = rng.standard_normal((b, 8, 2)).astype(np.float32)
  anchors /= np.linalg.norm(anchors, axis=1, keepdims=True)
  mask = (rng.random((b, size, size)) > 0.8).astype(np.float32)
  logits = 100.0 * np.einsum("bne,bek->bnk", feats, anchors)
  probs = losses.seg_probabilities(jnp.asarray(logits), (g, g), size)
  t_probs = ref.similarity_map(torch.from_numpy(feats), torch.from_numpy(anchors), size)
  # Logits of size ~100 carry float32 rounding of ~1e-5 from the two sides' own products, which the
  # softmax passes on as up to p(1-p) * 1e-5 in the probabilities (how much depends on the CPU's SIMD).
  close(probs, t_probs.permute(0, 2, 3, 1), atol=1e-5)
  t_mask = torch.from_numpy(mask)[:, None]
  close(losses.focal_loss(probs, mask), ref.focal(t_probs, t_mask), atol=1e-6)
  close(losses.seg_loss(probs, mask), ref.seg_loss(t_probs, t_mask), atol=1e-6)
  # the training path, which never builds the two-channel maps
  close(losses.seg_loss_from_logits(jnp.asarray(logits), (g, g), mask), ref.seg_loss(t_probs, t_mask), atol=1e-6)
  t_anchor = torch.from_numpy(anchors)
  want_orth = ((t_anchor[:, :, 0] * t_anchor[:, :, 1]).sum(1).mean()) ** 2
  close(losses.orthogonality_loss(anchors), want_orth, atol=1e-7)
  det = feats[:, 0]
  labels = np.array([0, 1, 1])
  want_ce = torch.nn.functional.cross_entropy(torch.matmul(torch.from_numpy(det)[:, None], t_anchor)[:, 0], torch.from_numpy(labels))
  close(losses.detection_loss(det, anchors, labels), want_ce, atol=1e-6)


def _shapes(cfg):
  from aajax.anomaly.model import init_shapes
  return init_shapes(cfg)


def _merge(params, flat):
  from aajax.params import flatten, unflatten
  merged = flatten(jax.tree.map(np.asarray, params))
  merged.update(flat)
  return unflatten(merged)


# -- full size: the paper's CLIP ViT-L/14-336 at 518 px and SigLIP so400m, random init ------------
FULL = {
    "clip-vit-large-patch14-336": dict(act="gelu", image_size=518),
    "siglip-so400m-patch14-384": dict(act=None, image_size=378),
}


@pytest.mark.full
@pytest.mark.parametrize("name", sorted(FULL))
def test_full_size_aa_forward_matches_reference(name, tmp_path):
  import dataclasses
  from aajax.anomaly.config import recipe_for_depth
  from aajax.encoders.config import get_config
  backbone = get_config(name)
  if FULL[name]["act"]:
    backbone = backbone.replace(vision=dataclasses.replace(backbone.vision, act=FULL[name]["act"]),
                                text=dataclasses.replace(backbone.text, act=FULL[name]["act"]))
  recipe = recipe_for_depth(backbone.vision.depth)
  cfg = AAConfig(backbone, image_size=FULL[name]["image_size"], dpam_mode="vv_batch", **recipe)
  ref_model, model, params = build(cfg, tmp_path)
  images = images_for(cfg, batch=1)
  ids = ids_for(cfg, (1, 3, cfg.backbone.text.max_len))
  with torch.no_grad():
    seg, det = ref_model.image_features(torch.from_numpy(images).permute(0, 3, 1, 2))
    anchors = ref_model.anchors(torch.from_numpy(ids), 1)
    surgery = ref_model.surgery_levels(torch.from_numpy(images).permute(0, 3, 1, 2), "vv_batch")
  del ref_model
  with jax.default_matmul_precision("highest"):
    out = jax.jit(lambda p, x: model.apply({"params": p}, x, method=AAModel.image_features))(params, images)
    got_anchors = model.apply({"params": params}, ids.astype(np.int32), 1, method=AAModel.text_anchors)
    got_surgery = jax.jit(lambda p, x: model.apply({"params": p}, x, method=AAModel.stage1_image_inputs))(params, images)
  # Deep towers at full width: unit vectors agree to ~1e-4 absolute.
  for a, b in zip(out["seg"], seg):
    close(a, b, atol=2e-4, rtol=1e-3)
  close(out["det"], det, atol=2e-4, rtol=1e-3)
  close(got_anchors, anchors, atol=1e-4, rtol=1e-3)
  for a, b in zip(got_surgery["levels"], surgery):
    close(a, b, atol=3e-4, rtol=1e-3)
