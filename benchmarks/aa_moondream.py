"""AA-Moondream speed: the fast path (anomaly head) in JAX against the same computation in PyTorch,
the stage-A training step, and the detailed path (explain: head, context, greedy explanation,
detect) in JAX; same random weights, same run.

Phases, each the median of --runs calls after a compiling first call (reported apart):
  head        adapted vision forward + anomaly head of a batch: maps and image logits
              (torch: tests/aa_moondream/test_parity.py's reference, Moondream's blocks from
              tests/moondream/torch_reference.py)
  stage_a     one training step of the head: loss, backward through the frozen tower into the
              adapters / projections / anchors, Adam update; JAX jitted, each call continuing from the
              new state and blocking on all of it; torch the reference's loss, backward and
              torch.optim.Adam (the loss and gradients equal, tests/aa_moondream/test_parity.py)
  explain     one image: head, boxes, 16 greedy explanation tokens after the context, detect (demo
              size only: the full decoder does not fit a CPU budget)

  python -m benchmarks.aa_moondream [--sizes demo md2] [--runs 3] [--out benchmarks/results/aa_moondream.json]
"""
import argparse
import dataclasses

import numpy as np

from benchmarks import harness

SIZES = {
    # configs/aa_moondream.py's demo: a 6-block tower at 128 px, batch 8; the tiny decoder
    "demo": dict(vision=dict(enc_dim=96, enc_patch_size=8, enc_n_layers=6, enc_ff_dim=384, enc_n_heads=4,
                             crop_size=128, overlap_margin=2, proj_inner_dim=128), max_context=512, embed_dim=64,
                 batch=8, explain=True),
    # Moondream 2's vision tower (27 blocks, 378 px, adapters 1-6, levels 7/14/21/27), one image
    "md2": dict(named="moondream2", embed_dim=768, batch=1, explain=False),
}


def config(size: str):
  from aajax.aa_moondream.config import AAMoondreamConfig, recipe_for_depth
  from aajax.vlm.config import get_config, tiny
  s = SIZES[size]
  if "named" in s:
    md = get_config(s["named"])
  else:
    md = tiny(max_context=s["max_context"])
    md = md.replace(vision=dataclasses.replace(md.vision, **s["vision"])).validate()
  return AAMoondreamConfig(md, embed_dim=s["embed_dim"], **recipe_for_depth(md.vision.enc_n_layers))


def head_params(cfg, vision_only: bool):
  """(Moondream params, head params), random; vision_only: no decoder (md2's is 5.6 GB of float32)."""
  import jax
  from aajax.aa_moondream.model import init_params
  from tests.moondream.helpers import random_params
  md = {"vision": _random_vision(cfg)} if vision_only else random_params(cfg.moondream, 0)
  head = jax.tree.map(np.asarray, init_params(cfg, jax.random.PRNGKey(1)))
  head.pop("vision")
  return md, head


def _random_vision(cfg):
  """Vision params at the scales of tests/moondream/helpers.random_params, without the other towers."""
  import jax
  from aajax.params import flatten, unflatten
  from aajax.vlm.vision import VisionEncoder
  v = cfg.moondream.vision
  x = np.zeros((1, v.crop_size, v.crop_size, 3), np.float32)
  shapes = flatten(jax.eval_shape(lambda: VisionEncoder(v).init(jax.random.PRNGKey(0), x)["params"]))
  rng = np.random.default_rng(0)
  scale = {"scale": None, "bias": 0.05, "pos_emb": 0.5}
  out = {}
  for path, sd in sorted(shapes.items()):
    n = rng.standard_normal(sd.shape).astype(np.float32)
    out[path] = (1 + 0.1 * n if path[-1] == "scale" else n * scale.get(path[-1], sd.shape[-2] ** -0.5 if n.ndim > 1 else 1))
  return unflatten(out)


def _vision_state(vision, cfg):
  """Checkpoint names of the vision params (what the torch reference reads)."""
  from aajax.params import flatten
  from weights_convert.moondream import TRANSFORMS, moondream_rows
  flat = flatten({"vision": vision})
  return {name: np.ascontiguousarray(TRANSFORMS[tr][1](np.asarray(flat[path], np.float32)))
          for path, name, tr in moondream_rows(cfg.moondream) if path[0] == "vision"}


def run_size(size: str, runs: int) -> dict:
  import jax
  import torch
  from aajax.aa_moondream.model import AAMoondream
  from tests.aa_moondream.test_parity import torch_head
  s = SIZES[size]
  cfg = config(size)
  md, head = head_params(cfg, vision_only=not s["explain"])
  model = AAMoondream(cfg)
  b, px = s["batch"], cfg.image_size
  rng = np.random.default_rng(0)
  images = rng.uniform(-1, 1, (b, px, px, 3)).astype(np.float32)
  masks = np.zeros((b, px, px), np.float32)
  masks[1::2, px // 4:px // 2, px // 3:px // 2] = 1
  batch = {"images": images, "masks": masks, "labels": (np.arange(b) % 2).astype(np.int32)}
  params = jax.device_put({**head, "vision": md["vision"]})
  out = {"config": {"size": size, "batch": b, "image_size": px, "depth": cfg.moondream.vision.enc_n_layers,
                    "width": cfg.moondream.vision.enc_dim, "levels": cfg.levels,
                    "adapters": cfg.image_adapt_until, "head_params": int(sum(x.size for x in jax.tree.leaves(head)))}}

  fwd = jax.jit(lambda p, x: model.apply({"params": p}, x)["fused_logits"])
  out["head_jax"] = harness.measure(lambda: fwd(params, images).block_until_ready(), runs)
  state = _vision_state(md["vision"], cfg)
  with torch.no_grad():
    out["head_torch"] = harness.measure(lambda: torch_head(cfg, state, head, images), runs)
  out["head_ratio_torch_over_jax"] = out["head_torch"]["median_s"] / out["head_jax"]["median_s"]

  out["stage_a_step_jax"] = _jax_step(model, head, params["vision"], batch, runs)
  out["stage_a_step_torch"] = _torch_step(cfg, state, head, batch, runs)
  out["stage_a_ratio_torch_over_jax"] = out["stage_a_step_torch"]["median_s"] / out["stage_a_step_jax"]["median_s"]
  if s["explain"]:
    out["explain_jax"] = _explain(cfg, md, head, runs)
  out["peak_mib"] = harness.peak_mib()
  return out


def _jax_step(model, head, frozen, batch, runs):
  """One jitted stage-A step (loss, gradients of the head through the frozen tower, Adam update),
  each call continuing from the previous state and waiting for the whole new state."""
  import jax
  import optax
  from aajax.aa_moondream import objectives
  tx = optax.adam(1e-3, b1=0.5)

  @jax.jit
  def step(trainable, opt, frozen, batch):   # frozen as an argument: a closure would embed it as constants
    loss, grads = jax.value_and_grad(lambda p: objectives.anomaly_loss(model, {**p, "vision": frozen}, batch)[0])(
        trainable)
    updates, opt = tx.update(grads, opt, trainable)
    return optax.apply_updates(trainable, updates), opt, loss

  trainable = jax.device_put(head)
  carry = [trainable, tx.init(trainable)]
  batch = jax.device_put(batch)

  def call():
    carry[0], carry[1], loss = step(carry[0], carry[1], frozen, batch)
    jax.block_until_ready((carry, loss))
  return harness.measure(call, runs)


def _torch_step(cfg, state, head, batch, runs):
  """The same step in torch: the reference head's loss, backward into the head params, Adam."""
  import jax
  import torch
  from tests.aa_moondream.test_parity import torch_stage_a_loss
  leaves, tree = jax.tree.flatten(head)
  params = [torch.tensor(np.asarray(x, np.float32), requires_grad=True) for x in leaves]
  head_t = jax.tree.unflatten(tree, params)
  opt = torch.optim.Adam(params, lr=1e-3, betas=(0.5, 0.999))

  def call():
    opt.zero_grad(set_to_none=True)
    torch_stage_a_loss(cfg, state, head_t, batch)[0].backward()
    opt.step()
  return harness.measure(call, runs)


def _explain(cfg, md, head, runs):
  from aajax.aa_moondream.exported import TrainedAAMoondream
  from aajax.aa_moondream.runtime import AAMoondreamRuntime
  from aajax.aa_moondream.tokenizer import demo_tokenizer
  tok = demo_tokenizer(cfg.moondream.text.vocab_size, cfg.moondream.tokenizer)
  trained = TrainedAAMoondream(cfg, md, head, None, tok, {"kind": "head"}, {"max_boxes": 3, "map_threshold": 0.5},
                               {"init": "", "seed": 0})
  rt = AAMoondreamRuntime(trained)
  image = np.random.default_rng(1).integers(0, 255, (cfg.image_size, cfg.image_size, 3), dtype=np.uint8)
  fast = harness.measure(lambda: rt.analyse([image]), runs)
  detailed = harness.measure(lambda: rt.explain(image, max_tokens=16), runs)
  return {"analyse": fast, "explain": detailed}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--sizes", nargs="+", default=["demo"], choices=sorted(SIZES))
  p.add_argument("--runs", type=int, default=3)
  p.add_argument("--out", default="benchmarks/results/aa_moondream.json")
  a = p.parse_args(argv)
  doc = {"environment": harness.environment(), "results": {}}
  for size in a.sizes:
    doc["results"][size] = r = run_size(size, a.runs)
    print(f"{size}: head jax {r['head_jax']['median_s'] * 1e3:.1f} ms, torch {r['head_torch']['median_s'] * 1e3:.1f} ms "
          f"(torch / jax {r['head_ratio_torch_over_jax']:.2f}); stage-A step jax {r['stage_a_step_jax']['median_s'] * 1e3:.1f} ms, "
          f"torch {r['stage_a_step_torch']['median_s'] * 1e3:.1f} ms (torch / jax {r['stage_a_ratio_torch_over_jax']:.2f})"
          + (f"; analyse {r['explain_jax']['analyse']['median_s'] * 1e3:.1f} ms, explain "
             f"{r['explain_jax']['explain']['median_s'] * 1e3:.1f} ms" if "explain_jax" in r else ""))
  harness.write_json(a.out, doc)


if __name__ == "__main__":
  main()
