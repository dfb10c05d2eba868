"""AA-CLIP speed: JAX against the same computation in PyTorch, on the same random weights, same run.

Phases, each timed as the median of --runs calls after a compiling first call (reported apart):
  infer    AA inference of a batch: adapted vision forward, patch-text maps of every level, grid
           blur, upsampling, detection scores (released test.py)
  stage1   one text-adapter training step: frozen plain + DPAM forwards of the images, anchors from
           the prompt ensemble, focal + dice over the levels + orthogonality, backward, Adam
  stage2   one image-adapter training step: adapted forward with gradients through the frozen blocks,
           CE on detection + focal + dice over the levels, backward, Adam
The torch side is the reference forward (tests/anomaly/torch_reference.py: transformers SiglipModel
driven block by block as the released code does) loaded with the weights the JAX side converts.

  python -m benchmarks.aa [--sizes demo base] [--runs 5] [--out benchmarks/results/aa.json]
"""
import argparse
import dataclasses
import pathlib
import tempfile

import numpy as np

from benchmarks import harness

SIZES = {
    # the README demo's model (configs/aa_siglip.py): batch 8 at 128 px, 16 x 16 patches
    "demo": dict(tower=dict(width=128, depth=6, heads=4, mlp_dim=512, patch=8, image_size=128, text_len=16,
                            vocab=4096), image_size=128, batch=8),
    # SigLIP B/16 at 224 px (12 blocks: levels 3/6/9/12), the paper's stage-2 batch of 2 and batch 4
    "base": dict(named="siglip-base-patch16-224", image_size=224, batch=4, text_len=16),
}


def aa_config(size: str):
  from aajax.anomaly.config import AAConfig, recipe_for_depth
  from aajax.encoders.config import get_config, siglip
  s = SIZES[size]
  if "named" in s:
    backbone = get_config(s["named"])
    backbone = backbone.replace(text=dataclasses.replace(backbone.text, max_len=s["text_len"]))
  else:
    backbone = siglip(**s["tower"])
  auto = recipe_for_depth(backbone.vision.depth)
  return AAConfig(backbone, image_size=s["image_size"], text_adapt_until=3, **auto)


def inputs(cfg, batch, classes=4, seed=0):
  rng = np.random.default_rng(seed)
  s = cfg.image_size
  images = rng.standard_normal((batch, s, s, 3)).astype(np.float32)
  masks = np.zeros((batch, s, s), np.float32)
  masks[:, s // 4:s // 2, s // 3:s // 2] = 1.0
  masks[::2] = 0.0
  labels = (masks.reshape(batch, -1).max(1) > 0).astype(np.int32)
  ids = rng.integers(3, cfg.backbone.text.vocab_size - 3, (classes, 16, cfg.backbone.text.max_len)).astype(np.int32)
  class_ids = (np.arange(batch) % classes).astype(np.int32)
  return {"images": images, "masks": masks, "labels": labels, "class_ids": class_ids}, ids


# -- JAX -------------------------------------------------------------------------------------------
def jax_phases(model, params, batch, ids, runs):
  import jax
  import optax
  from aajax.anomaly import inference, objectives
  tx = optax.adam(1e-4, 0.5, 0.999)
  # On the device once, as a loaded or training model's are: host (numpy) params and batches would
  # be copied in every step
  params, batch, ids = jax.device_put((params, batch, ids))
  table = objectives.anchor_table(model, params, ids)
  predict = inference.make_predict_fn(model)
  out = {"infer": harness.measure(lambda: jax.block_until_ready(
      predict(params, table, batch["images"], batch["class_ids"])), runs)}
  for stage in ("text", "image"):
    frozen, trainable = objectives.split_params(params, stage)

    def loss(tr, fr, b, stage=stage):
      p = objectives.merge(fr, tr)
      if stage == "text":
        return objectives.stage1_loss(model, p, b, ids, None)[0]
      return objectives.stage2_loss(model, p, b, table)[0]

    @jax.jit
    def step(tr, opt, fr, b):
      g = jax.grad(loss)(tr, fr, b)
      upd, opt = tx.update(g, opt, tr)
      return optax.apply_updates(tr, upd), opt

    state = [trainable, tx.init(trainable)]

    def run_step():
      state[0], state[1] = jax.block_until_ready(step(state[0], state[1], frozen, batch))

    out["stage1" if stage == "text" else "stage2"] = harness.measure(run_step, runs)
  return out


# -- torch -----------------------------------------------------------------------------------------
def torch_phases(ref, cfg, batch, ids, runs):
  import torch
  from tests.anomaly import torch_reference as R
  from aajax.eval.maps import GRID_BLUR
  images = torch.from_numpy(batch["images"]).permute(0, 3, 1, 2).contiguous()
  masks, labels = torch.from_numpy(batch["masks"]), torch.from_numpy(batch["labels"]).long()
  class_ids = torch.from_numpy(batch["class_ids"]).long()
  tids = torch.from_numpy(ids).long()
  for p in ref.hf.parameters():
    p.requires_grad_(False)
  with torch.no_grad():
    table = ref.anchors(tids, 6)

  def infer():
    with torch.no_grad():
      seg, det = ref.image_features(images)
      R.test_maps(seg, det, table[class_ids], cfg.image_size, *GRID_BLUR["Industrial"])

  text_params = list(ref.text_adapter.parameters())
  image_params = list(ref.image_adapter.parameters())
  opt1 = torch.optim.Adam(text_params, 1e-4, betas=(0.5, 0.999))
  opt2 = torch.optim.Adam(image_params, 1e-4, betas=(0.5, 0.999))

  def stage1():
    with torch.no_grad():
      feats = ref.surgery_levels(images, "vv")
    anchors = ref.anchors(tids, 6)[class_ids]
    loss = sum(R.seg_loss(R.similarity_map(f, anchors, cfg.image_size), masks) for f in feats)
    loss = loss + 0.1 * (anchors[:, :, 0] * anchors[:, :, 1]).sum(1).mean() ** 2
    opt1.zero_grad()
    loss.backward()
    opt1.step()

  def stage2():
    seg, det = ref.image_features(images)
    anchors = table[class_ids]
    loss = torch.nn.functional.cross_entropy((det[:, None] @ anchors)[:, 0], labels)
    loss = loss + sum(R.seg_loss(R.similarity_map(f, anchors, cfg.image_size), masks) for f in seg)
    opt2.zero_grad()
    loss.backward()
    opt2.step()

  return {"infer": harness.measure(infer, runs), "stage1": harness.measure(stage1, runs),
          "stage2": harness.measure(stage2, runs)}


def bench_size(size: str, runs: int) -> dict:
  from aajax.anomaly.model import AAModel
  from tests.anomaly.test_aa_parity import build
  cfg = aa_config(size)
  with tempfile.TemporaryDirectory() as tmp:
    ref, _, params = build(cfg, pathlib.Path(tmp))
  model = AAModel(cfg)
  batch, ids = inputs(cfg, SIZES[size]["batch"])
  ours = jax_phases(model, params, batch, ids, runs)
  theirs = torch_phases(ref.train(), cfg, batch, ids, runs)
  b = SIZES[size]["batch"]
  rows = {}
  for phase in ours:
    j, t = ours[phase], theirs[phase]
    rows[phase] = {"jax": j, "torch": t, "torch_over_jax": t["median_s"] / j["median_s"]}
    if phase == "infer":
      rows[phase].update(jax_images_per_s=b / j["median_s"], torch_images_per_s=b / t["median_s"])
    print(f"{size:5s} {phase:7s} jax {j['median_s'] * 1e3:8.1f} ms (first {j['first_s']:.1f} s)  "
          f"torch {t['median_s'] * 1e3:8.1f} ms  torch/jax {rows[phase]['torch_over_jax']:.2f}"
          f"{'  CONTENDED' if j['contended'] or t['contended'] else ''}", flush=True)
  return {"config": {"image_size": cfg.image_size, "levels": cfg.levels, "batch": b,
                     "width": cfg.backbone.vision.width, "depth": cfg.backbone.vision.depth}, "phases": rows}


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--sizes", nargs="+", default=["demo", "base"], choices=sorted(SIZES))
  ap.add_argument("--runs", type=int, default=5)
  ap.add_argument("--out", default="benchmarks/results/aa.json")
  args = ap.parse_args(argv)
  import jax
  jax.config.update("jax_default_matmul_precision", "highest")   # same fp32 math as torch
  doc = {"environment": harness.environment(), "sizes": {s: bench_size(s, args.runs) for s in args.sizes}}
  harness.write_json(args.out, doc)


if __name__ == "__main__":
  main()
