"""SigLIP / CLIP tower throughput: JAX against transformers (torch) on the same random weights, same run.

For each family, size and batch, the image tower (pixels -> pooled embedding) and the text tower
(ids -> pooled embedding) are timed on both sides: median of --runs calls after a compiling first
call (compile time reported apart), with the CPU time other processes used meanwhile. The torch side
is transformers' `SiglipModel` / `CLIPModel` with its default (SDPA) attention under `no_grad`; the
JAX side is the converted model under `jax.jit`. `speedup` = torch median / JAX median (> 1: JAX faster).

  python -m benchmarks.encoders [--sizes small base] [--families siglip clip] [--batches 1 8]
                                [--runs 5] [--out benchmarks/results/encoders.json]

Sizes: small (ViT-S-like 384-wide towers), base (siglip-base-patch16-224 / clip-vit-base-patch16),
and the issue's large settings so400m (SigLIP so400m at 384 px) and large518 (CLIP ViT-L/14 at
518 px, position table resized), which need ~10 GiB and many minutes on a small CPU.
"""
import argparse
import dataclasses
import time

import numpy as np

from benchmarks import harness


def config(family: str, size: str):
  from aajax.encoders.config import clip, get_config, siglip
  if size == "small":
    if family == "siglip":
      return siglip(384, 12, 6, 1536, 16, 224)
    return clip(384, 12, 6, 16, 224, 384, 12, 6, 384)
  if size == "base":
    return get_config("siglip-base-patch16-224" if family == "siglip" else "clip-vit-base-patch16")
  if size == "so400m" and family == "siglip":
    return get_config("siglip-so400m-patch14-384")
  if size == "large518" and family == "clip":
    return get_config("clip-vit-large-patch14-336")
  return None


def image_size(size: str, cfg) -> int:
  return 518 if size == "large518" else cfg.vision.image_size


def build(cfg):
  """(transformers model, aajax module, params) with the same random weights."""
  import torch
  import transformers
  from aajax.encoders.two_towers import TwoTowerModel
  from weights_convert.common import apply_table, expected_shapes
  from weights_convert.hf_towers import TRANSFORMS, split_fused, two_tower_rows
  from weights_convert.towers import HF_IGNORED, example_inputs
  v, t = cfg.vision, cfg.text
  act = {"gelu_tanh": "gelu_pytorch_tanh", "gelu": "gelu", "quick_gelu": "quick_gelu"}
  vision = dict(hidden_size=v.width, num_hidden_layers=v.depth, num_attention_heads=v.heads,
                intermediate_size=v.mlp_dim, patch_size=v.patch, image_size=v.image_size,
                layer_norm_eps=v.ln_eps, hidden_act=act[v.act])
  text = dict(hidden_size=t.width, num_hidden_layers=t.depth, num_attention_heads=t.heads,
              intermediate_size=t.mlp_dim, vocab_size=t.vocab_size, max_position_embeddings=t.max_len,
              layer_norm_eps=t.ln_eps, hidden_act=act[t.act])
  torch.manual_seed(0)
  if cfg.family == "siglip":
    text.update(pad_token_id=1, eos_token_id=1, bos_token_id=None)
    hf = transformers.SiglipModel(transformers.SiglipConfig(vision_config=vision, text_config=text))
  else:
    text.update(pad_token_id=t.vocab_size - 1, eos_token_id=2, bos_token_id=t.vocab_size - 2)
    hf = transformers.CLIPModel(transformers.CLIPConfig(vision_config=vision, text_config=text,
                                                        projection_dim=v.proj_dim))
  hf = hf.eval()
  state = split_fused({k: val.numpy() for k, val in hf.state_dict().items()}, ["vision_model.head.attention"])
  model = TwoTowerModel(cfg)
  shapes = expected_shapes(model, *example_inputs(cfg))
  params = apply_table(state, two_tower_rows(cfg), shapes, TRANSFORMS, "random model", HF_IGNORED)
  return hf, model, params


def inputs(cfg, batch: int, size: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  images = rng.standard_normal((batch, size, size, 3)).astype(np.float32)
  ids = rng.integers(3, cfg.text.vocab_size - 3, (batch, cfg.text.max_len)).astype(np.int32)
  if cfg.family == "clip":
    ids[:, 10] = cfg.text.vocab_size - 1
  return images, ids


def jax_fns(model, params):
  import jax
  from aajax.encoders.two_towers import TwoTowerModel
  image = jax.jit(lambda p, x: model.apply({"params": p}, x, method=TwoTowerModel.encode_image)["pooled"])
  text = jax.jit(lambda p, t: model.apply({"params": p}, t, method=TwoTowerModel.encode_text)["pooled"])
  # On the device once, as a loaded model's are: host (numpy) params would be copied in every call
  params = jax.device_put(params)
  return ((lambda x: jax.block_until_ready(image(params, jax.device_put(x)))),
          (lambda t: jax.block_until_ready(text(params, jax.device_put(t)))))


def torch_fns(hf, interpolate: bool):
  import torch

  def image(x):
    with torch.no_grad():
      return hf.get_image_features(pixel_values=x, interpolate_pos_encoding=interpolate)

  def text(t):
    with torch.no_grad():
      return hf.get_text_features(input_ids=t)
  return image, text


def bench_one(family, size, batches, runs):
  import torch
  cfg = config(family, size)
  t0 = time.perf_counter()
  hf, model, params = build(cfg)
  build_s = time.perf_counter() - t0
  px = image_size(size, cfg)
  j_image, j_text = jax_fns(model, params)
  t_image, t_text = torch_fns(hf, interpolate=px != cfg.vision.image_size)
  rows = []
  for batch in batches:
    images, ids = inputs(cfg, batch, px)
    timg, tids = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(ids.astype(np.int64))
    for tower, jfn, tfn, jx, tx in (("image", j_image, t_image, images, timg), ("text", j_text, t_text, ids, tids)):
      j = harness.measure(lambda: jfn(jx), runs)
      t = harness.measure(lambda: tfn(tx), runs)
      j["compile_s"] = max(0.0, j["first_s"] - j["median_s"])
      n = batch
      row = {"family": family, "size": size, "tower": tower, "batch": batch,
             "resolution": px if tower == "image" else cfg.text.max_len,
             "jax": j, "torch": t, "jax_items_per_s": n / j["median_s"], "torch_items_per_s": n / t["median_s"],
             "speedup": t["median_s"] / j["median_s"]}
      print(f"{family:6} {size:8} {tower:5} b{batch:<2} jax {row['jax_items_per_s']:8.2f}/s  "
            f"torch {row['torch_items_per_s']:8.2f}/s  speedup {row['speedup']:.2f}  "
            f"compile {j['compile_s']:.1f}s{'  (contended)' if j['contended'] or t['contended'] else ''}")
      rows.append(row)
  return {"family": family, "size": size, "build_s": build_s, "peak_rss_mib": harness.peak_mib(),
          "params": int(sum(np.size(x) for x in __import__("jax").tree.leaves(params))), "rows": rows,
          "config": dataclasses.asdict(cfg)}


def main(argv=None):
  ap = argparse.ArgumentParser(prog="python -m benchmarks.encoders", description=__doc__.split("\n")[0])
  ap.add_argument("--sizes", nargs="+", default=["small", "base"],
                  choices=["small", "base", "so400m", "large518"])
  ap.add_argument("--families", nargs="+", default=["siglip", "clip"], choices=["siglip", "clip"])
  ap.add_argument("--batches", nargs="+", type=int, default=[1, 8])
  ap.add_argument("--runs", type=int, default=5)
  ap.add_argument("--out", default="benchmarks/results/encoders.json")
  args = ap.parse_args(argv)
  import jax
  jax.config.update("jax_default_matmul_precision", "float32")  # fp32 on both sides (no TF32/bf16 passes)
  results = []
  for size in args.sizes:
    for family in args.families:
      if config(family, size) is not None:
        results.append(bench_one(family, size, args.batches, args.runs))
  harness.write_json(args.out, {"benchmark": "encoders", "environment": harness.environment(),
                                "runs": args.runs, "results": results})


if __name__ == "__main__":
  main()
