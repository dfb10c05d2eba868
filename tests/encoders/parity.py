"""Checks shared by the converter parity tests: run a converted model and compare it with torch outputs.

Tolerances: fp32 at highest matmul precision; hidden states rtol 1e-5 relative to the tensor's scale
for tiny towers. Deep full-size towers accumulate summation-order differences through 24-27 blocks,
so full-size tests pass larger `scale` factors (documented there).
"""
import jax
import numpy as np
import torch

from aajax.encoders.two_towers import TwoTowerModel, l2_normalize


def run_model(model, params, images, ids, taps=True):
  """{"image", "text": pooled embeddings, "image_hidden", "text_hidden": [layer arrays], "logits"}."""
  cfg = model.cfg
  vtaps = tuple(range(cfg.vision.depth + 1)) if taps else ()
  ttaps = tuple(range(cfg.text.depth + 1)) if taps else ()
  with jax.default_matmul_precision("highest"):
    img = jax.jit(lambda p, x: model.apply({"params": p}, x, taps=vtaps, method=TwoTowerModel.encode_image))(params, images)
    txt = jax.jit(lambda p, t: model.apply({"params": p}, t, taps=ttaps, method=TwoTowerModel.encode_text))(params, ids)
    logits = model.apply({"params": params}, img["pooled"], txt["pooled"], method=TwoTowerModel.logits)
  return {"image": img["pooled"], "text": txt["pooled"], "logits": logits,
          "image_hidden": [img["hidden"][k] for k in vtaps], "text_hidden": [txt["hidden"][k] for k in ttaps]}


def hf_outputs(hf, images_nhwc, ids):
  with torch.no_grad():
    out = hf(input_ids=torch.from_numpy(np.asarray(ids, np.int64)),
             pixel_values=torch.from_numpy(images_nhwc).permute(0, 3, 1, 2), output_hidden_states=True)
  # transformers 5 returns the projected (CLIP) / head (SigLIP) outputs as the towers' pooler_output.
  image, text = out.vision_model_output.pooler_output, out.text_model_output.pooler_output
  return {"image": image, "text": text, "logits": out.logits_per_text,
          "image_hidden": list(out.vision_model_output.hidden_states),
          "text_hidden": list(out.text_model_output.hidden_states)}


def rel_err(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def assert_close(got: dict, want: dict, rtol=1e-5, hidden_rtol=None, logits_atol=1e-4):
  """Pooled embeddings and every hidden state within rtol of the tensor's max magnitude."""
  hidden_rtol = hidden_rtol or rtol
  to_np = lambda x: x.detach().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
  for key in ("image", "text"):
    g, w = to_np(got[key]), to_np(want[key])
    assert rel_err(g, w) < rtol, f"{key} embedding: relative error {rel_err(g, w):.2e}"
    gn, wn = np.asarray(l2_normalize(g)), w / np.linalg.norm(w, axis=-1, keepdims=True)
    assert np.abs(gn - wn).max() < 10 * rtol, f"{key} unit embedding off by {np.abs(gn - wn).max():.2e}"
  for key in ("image_hidden", "text_hidden"):
    assert len(got[key]) == len(want[key]), f"{key}: {len(got[key])} vs {len(want[key])} layers"
    for k, (g, w) in enumerate(zip(got[key], want[key])):
      err = rel_err(to_np(g), to_np(w))
      assert err < hidden_rtol, f"{key}[{k}]: relative error {err:.2e}"
  g, w = to_np(got["logits"]), to_np(want["logits"])
  np.testing.assert_allclose(g, w, atol=logits_atol, rtol=rtol * 10)
