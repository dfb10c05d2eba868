"""Import released AA-CLIP adapter checkpoints into an aajax AA model directory.

    python -m weights_convert.aaclip --backbone <converted CLIP/SigLIP dir> \
        --text_adapter text_adapter.pth [--image_adapter image_adapter_15.pth] [--relu] \
        [--image_size 518] --dst <dir>

Files and keys (torch `[out, in]` weights, transposed here):
  text_adapter.pth   {"epoch", "text_adapter": {"{i}.fc.0.weight" for the K_T adapters,
                      "{K_T}.fc.0.weight" the text projector}, "text_optimizer", and for the
                      stage-1 cross-attention variant "text_cross_attn": {"{q,k,v,out}_proj.{weight,bias}"}
                      (or a fused nn.MultiheadAttention "in_proj_weight/bias" + "out_proj")}
  image_adapter*.pth {"epoch", "image_adapter": {"layer_adapters.{i}.fc.0.weight",
                      "seg_proj.{k}.fc.weight", "det_proj.fc.weight"} ("fc.0.weight" with --relu),
                      "image_optimizer"}
Optimizer states are not imported. The output is a self-contained `aa` model directory.
"""
import argparse
import os
import sys

import numpy as np

from aajax.anomaly.config import AAConfig, recipe_for_depth
from aajax.errors import AajaxError, CheckpointError
from weights_convert.common import apply_table, flatten, require_file, unflatten
from weights_convert.hf_towers import TRANSFORMS, split_fused


def text_rows(cfg: AAConfig):
  for i in range(cfg.text_adapt_until):
    yield (f"text_adapters_{i}", "fc", "kernel"), f"{i}.fc.0.weight", "T"
  yield ("text_proj", "fc", "kernel"), f"{cfg.text_adapt_until}.fc.0.weight", "T"


def image_rows(cfg: AAConfig):
  proj = "fc.0.weight" if cfg.projector_relu else "fc.weight"
  for i in range(cfg.image_adapt_until):
    yield (f"image_adapters_{i}", "fc", "kernel"), f"layer_adapters.{i}.fc.0.weight", "T"
  for k in range(len(cfg.levels)):
    yield (f"seg_proj_{k}", "fc", "kernel"), f"seg_proj.{k}.{proj}", "T"
  yield ("det_proj", "fc", "kernel"), f"det_proj.{proj}", "T"


def cross_attn_rows():
  for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
    yield ("cross_attn", "attn", proj, "kernel"), f"{proj}.weight", "T"
    yield ("cross_attn", "attn", proj, "bias"), f"{proj}.bias", "id"


def read_group(path: str, group: str) -> dict:
  """One sub-dict of a released `.pth` (e.g. "text_adapter") as float32 numpy arrays."""
  require_file(path, "AA-CLIP checkpoint")
  import torch
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # torch raises many types for a corrupt or foreign file
    raise CheckpointError(f"cannot read AA-CLIP checkpoint {path}: {str(e).splitlines()[0]}") from None
  if not isinstance(obj, dict) or group not in obj:
    keys = sorted(obj)[:6] if isinstance(obj, dict) else type(obj).__name__
    raise CheckpointError(f"{path} has no {group!r} entry (found {keys}); is it the right AA-CLIP file?")
  return {k: v.detach().float().numpy() for k, v in obj[group].items()}


def adapter_params(cfg: AAConfig, shapes: dict, text_file=None, image_file=None) -> dict:
  """Flat {flax path: array} of the adapter groups found in the given files."""
  flat = {}

  def take(state, rows, source):
    paths = {r[0] for r in rows}
    tree = apply_table(state, rows, {p: s for p, s in shapes.items() if p in paths}, TRANSFORMS, source)
    flat.update(flatten(tree))

  if text_file:
    take(read_group(text_file, "text_adapter"), list(text_rows(cfg)), text_file)
    if cfg.cross_attention:
      state = split_fused(read_group(text_file, "text_cross_attn"), [""])
      take(state, list(cross_attn_rows()), text_file + " (text_cross_attn)")
  if image_file:
    take(read_group(image_file, "image_adapter"), list(image_rows(cfg)), image_file)
  return flat


def layout_from_files(text_file=None, image_file=None) -> dict:
  """Adapter counts read from the checkpoint keys, so non-default K_T / K_I convert as they are."""
  layout = {}
  if text_file:
    n = len([k for k in read_group(text_file, "text_adapter") if k.endswith(".weight")])
    layout["text_adapt_until"] = n - 1  # the last entry is the text projector
  if image_file:
    keys = read_group(image_file, "image_adapter")
    layout["image_adapt_until"] = len([k for k in keys if k.startswith("layer_adapters.")])
    layout["num_levels"] = len([k for k in keys if k.startswith("seg_proj.")])
  return layout


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(prog="python -m weights_convert.aaclip", description=__doc__.split("\n")[0])
  ap.add_argument("--backbone", required=True, help="converted two-tower directory (weights_convert.clip/siglip)")
  ap.add_argument("--text_adapter", help="text_adapter.pth (stage 1)")
  ap.add_argument("--image_adapter", help="image_adapter_<epoch>.pth (stage 2)")
  ap.add_argument("--dst", required=True)
  ap.add_argument("--relu", action="store_true", help="the checkpoints were trained with --relu")
  ap.add_argument("--cross_attention", action="store_true", help="text checkpoint of the cross-attention variant")
  ap.add_argument("--cross_attn_heads", type=int, default=8)
  ap.add_argument("--cross_attn_level", type=int, default=None, help="vision block of the context (default: the first level)")
  ap.add_argument("--image_size", type=int, default=518)
  ap.add_argument("--levels", default=None, help="comma-separated 1-based vision blocks tapped "
                  "(default: 6,12,18,24 for 24-block towers, evenly spaced otherwise)")
  ap.add_argument("--overwrite", action="store_true")
  args = ap.parse_args(argv)
  try:
    convert(args)
  except AajaxError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"wrote {args.dst}")
  return 0


def convert(args):
  import jax
  from aajax.anomaly.model import init_params, init_shapes
  from aajax.model_dir import load_model, save_model
  if not (args.text_adapter or args.image_adapter):
    raise CheckpointError("give at least one of --text_adapter / --image_adapter")
  backbone_model, backbone_params = load_model(args.backbone, expect_kind="two_tower")
  recipe = recipe_for_depth(backbone_model.cfg.vision.depth)
  layout = layout_from_files(args.text_adapter, args.image_adapter)
  if args.levels:
    recipe["levels"] = tuple(int(v) for v in args.levels.split(","))
  num_levels = layout.pop("num_levels", len(recipe["levels"]))
  if num_levels != len(recipe["levels"]):
    raise CheckpointError(f"{args.image_adapter} has {num_levels} seg_proj entries but {len(recipe['levels'])} "
                          f"levels {recipe['levels']} are configured; pass --levels with {num_levels} blocks")
  recipe.update(layout)
  recipe["cross_attn_heads"] = args.cross_attn_heads
  if args.cross_attn_level:
    recipe["cross_attn_level"] = args.cross_attn_level
  recipe.setdefault("text_adapt_until", min(3, backbone_model.cfg.text.depth))
  cfg = AAConfig(backbone_model.cfg, image_size=args.image_size, projector_relu=args.relu,
                 cross_attention=args.cross_attention, **recipe)
  shapes = init_shapes(cfg)
  flat = adapter_params(cfg, shapes, args.text_adapter, args.image_adapter)
  missing = [p for p in shapes if p not in flat and p[0] != "backbone"]
  if missing:  # groups not given keep their fresh (Xavier) init, as the reference would
    fresh = flatten(init_params(cfg, jax.random.PRNGKey(0)))
    flat.update({p: np.asarray(fresh[p]) for p in missing})
  flat.update({("backbone",) + p: v for p, v in flatten(backbone_params).items()})
  source = ", ".join(os.path.basename(f) for f in (args.text_adapter, args.image_adapter) if f)
  save_model(args.dst, "aa", cfg.to_dict(), unflatten(flat), source=source, overwrite=args.overwrite)


if __name__ == "__main__":
  sys.exit(main())
