"""The conversion both two-tower CLIs share: read, recognise, check every tensor, save atomically.

    source file(s) -> flat tensors -> naming scheme + family check -> config from the shapes
    -> name table of that scheme -> params checked against the model's own shapes
    -> optional position-table resize -> model directory (config.json, params/, tokenizer/)
"""
import argparse
import atexit
import dataclasses
import os
import shutil
import sys
import tempfile

import numpy as np

from aajax.encoders.config import TwoTowerConfig
from aajax.encoders.tokenizers import openai_bpe_file, write_bpe_from_openai
from aajax.errors import AajaxError, CheckpointError, ConfigError
from weights_convert import big_vision, openai_clip
from weights_convert.common import apply_table, expected_shapes, flatten
from weights_convert.detect import check_act, infer_config, require_family
from weights_convert.hf_towers import TRANSFORMS, split_fused, two_tower_rows
from weights_convert.sources import TOKENIZER_FILES, read_source

HF_IGNORED = ("text_model.embeddings.position_ids", "vision_model.embeddings.position_ids")


def table(scheme: str, cfg: TwoTowerConfig, state: dict):
  """(state ready for the table, rows, transforms, ignored name prefixes) of a naming scheme."""
  if scheme == "hf":
    return split_fused(state, ["vision_model.head.attention"]), two_tower_rows(cfg), TRANSFORMS, HF_IGNORED
  if scheme == "openai":
    return state, openai_clip.openai_rows(cfg), TRANSFORMS, openai_clip.IGNORED
  return state, big_vision.big_vision_rows(cfg), big_vision.transforms(cfg), ()


def example_inputs(cfg: TwoTowerConfig, batch: int = 1):
  s = cfg.vision.image_size
  return np.zeros((batch, s, s, 3), np.float32), np.zeros((batch, cfg.text.max_len), np.int32)


def resize_positions_to(cfg: TwoTowerConfig, params: dict, image_size: int) -> tuple[TwoTowerConfig, dict]:
  """Store the position table for a new native resolution (what open_clip/AA-CLIP do at load time)."""
  from aajax.encoders.vit import resize_positions
  v = cfg.vision
  if image_size % v.patch and image_size // v.patch != v.grid:
    raise ConfigError(f"--image_size {image_size} is not a multiple of the patch size {v.patch}")
  new_grid = image_size // v.patch
  if new_grid != v.grid:
    table_ = params["vision"]["pos_embedding"]
    params["vision"]["pos_embedding"] = np.asarray(
        resize_positions(table_, v.grid, (new_grid, new_grid), v.num_prefix_tokens, v.posemb_resize))
  return cfg.replace(vision=dataclasses.replace(v, image_size=image_size)), params


def tokenizer_files(path: str | None) -> dict[str, str]:
  """{tokenizer/<name>: source file} for a tokenizer directory or a single SentencePiece/BPE file."""
  if path is None:
    return {}
  if not os.path.exists(path):
    raise CheckpointError(f"tokenizer not found: {path}")
  bpe = openai_bpe_file(path)
  if bpe is not None:   # stored as the vocab.json + merges.txt it implies, which every loader reads
    out = tempfile.mkdtemp(prefix="aajax_bpe_")
    atexit.register(shutil.rmtree, out, True)
    write_bpe_from_openai(bpe, out)
    return {f"tokenizer/{f}": os.path.join(out, f) for f in sorted(os.listdir(out))}
  if os.path.isfile(path):
    if path.endswith(".model"):  # a bare SentencePiece model (big_vision's c4_en)
      return {"tokenizer/spiece.model": path}
    raise CheckpointError(f"{path}: expected a tokenizer directory, a SentencePiece .model file or OpenAI's "
                          f"bpe_simple_vocab_16e6.txt.gz")
  found = {f"tokenizer/{f}": os.path.join(path, f) for f in TOKENIZER_FILES if os.path.exists(os.path.join(path, f))}
  if not found:
    raise CheckpointError(f"no tokenizer files in {path} (expected one of {', '.join(TOKENIZER_FILES)})")
  return found


def convert(family: str, src: str, dst: str, act: str | None = None, image_size: int | None = None,
            tokenizer: str | None = None, overwrite: bool = False) -> tuple[TwoTowerConfig, int]:
  """Convert `src` into the model directory `dst`; returns (config, parameter count)."""
  from aajax.encoders.two_towers import TwoTowerModel
  from aajax.model_dir import save_model
  check_act(act)
  if os.path.exists(dst) and not overwrite:  # fail before the (slow) read
    raise CheckpointError(f"output directory already exists: {dst} (pass --overwrite to replace it)")
  source = read_source(src)
  state = big_vision.unscan(source.state) if source.scheme == "big_vision" else source.state
  require_family(state, source.scheme, family, src)
  cfg, name = infer_config(state, source.scheme, family, src, source.hf_config, act)
  state, rows, transforms, ignored = table(source.scheme, cfg, state)
  shapes = expected_shapes(TwoTowerModel(cfg), *example_inputs(cfg))
  params = apply_table(state, rows, shapes, transforms, src, ignore_prefixes=ignored)
  del state, source.state
  if image_size:
    cfg, params = resize_positions_to(cfg, params, image_size)
  extra = tokenizer_files(tokenizer if tokenizer else source.tokenizer_dir)
  description = f"{src} ({source.scheme}{', ' + name if name else ''})"
  save_model(dst, "two_tower", cfg.to_dict(), params, source=description, overwrite=overwrite, extra_files=extra)
  return cfg, sum(np.size(v) for v in flatten(params).values())


def main(family: str, argv=None, doc: str = "") -> int:
  ap = argparse.ArgumentParser(prog=f"python -m weights_convert.{family}", description=doc.split("\n")[0])
  ap.add_argument("--src", required=True, help="checkpoint directory or file")
  ap.add_argument("--dst", required=True, help="output model directory (written atomically)")
  ap.add_argument("--image_size", type=int, default=None,
                  help="native resolution to store; the position table is resized (bicubic, antialiased)")
  ap.add_argument("--tokenizer", default=None, help="tokenizer directory (or SentencePiece .model) to bundle; "
                  "defaults to the tokenizer files found next to an HF checkpoint")
  if family == "clip":
    ap.add_argument("--act", choices=("quick_gelu", "gelu"), default=None,
                    help="MLP activation: quick_gelu (OpenAI training; default for .pt files) or gelu "
                         "(exact erf, as AA-CLIP runs OpenAI weights); default from config.json for HF dirs")
  ap.add_argument("--overwrite", action="store_true")
  args = ap.parse_args(argv)
  try:
    cfg, n = convert(family, args.src, args.dst, getattr(args, "act", None), args.image_size, args.tokenizer,
                  args.overwrite)
  except AajaxError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"wrote {args.dst}: {family} vision {cfg.vision.width}x{cfg.vision.depth} @ {cfg.vision.image_size}px, "
        f"text {cfg.text.width}x{cfg.text.depth} ({n / 1e6:.1f}M params)")
  return 0
