"""The AA-Moondream model directory, written at the end of each stage (`<stage workdir>/model`).

    config.json      {"kind": "aa_moondream", "config": {"aa": AAMoondreamConfig, "base": {"init", "seed"},
                      "source": anomaly source spec, "qa": {"max_boxes", "map_threshold"}}}
    params/          {"head": adapters, projections, anchors, level weights; "lora": decoder LoRA
                      (after stage "qa"); "moondream": the base params, only for a random base}
    tokenizer.json

The kind is registered in `aajax.model_dir`, so `aajax.model_dir.load_model(dir)` gives
(AAMoondream module, the stored params); `load_model` below also resolves the base Moondream and the
tokenizer.

A converted base (`base.init`) is not copied: the directory refers to it, as AA model directories
refer to their tokenizer, so a 2B base is stored once.
"""
import dataclasses
import os

import numpy as np

from aajax.aa_moondream.config import AAMoondreamConfig
from aajax.errors import CheckpointError

KIND = "aa_moondream"
MODEL_DIR = "model"


@dataclasses.dataclass
class TrainedAAMoondream:
  cfg: AAMoondreamConfig
  moondream: dict           # base params {"vision", "text", "region"}
  head: dict | None         # trainable anomaly-branch groups (None: an AA-model source only)
  lora: dict | None
  tokenizer: object         # MoondreamTokenizer
  source: dict              # anomaly source spec
  qa: dict                  # {"max_boxes", "map_threshold"}
  base: dict


def config_from_meta(meta: dict) -> AAMoondreamConfig:
  """The AAMoondreamConfig of a directory's config.json "config" entry."""
  try:
    return AAMoondreamConfig.from_dict(meta["aa"])
  except (KeyError, TypeError) as e:
    raise CheckpointError(f"AA-Moondream model config lacks {e}") from None


def write_model(path: str, cfg: AAMoondreamConfig, base: dict, moondream, head, lora, tokenizer, source: dict,
                qa: dict) -> str:
  import tempfile

  import jax
  from aajax.aa_moondream.tokenizer import save_tokenizer
  from aajax.model_dir import save_model
  params = {}
  if head:
    params["head"] = head
  if lora is not None:
    params["lora"] = lora
  if not base.get("init"):
    params["moondream"] = moondream
  meta = {"aa": cfg.to_dict(), "base": base, "source": source, "qa": qa}
  with tempfile.TemporaryDirectory() as tmp:
    tok_path = save_tokenizer(tokenizer, os.path.join(tmp, "tokenizer.json"))
    save_model(path, KIND, meta, jax.tree.map(np.asarray, params), source="launch.train", overwrite=True,
               extra_files={"tokenizer.json": tok_path})
  return path


def find_model_dir(path: str) -> str:
  """A model directory, or a training workdir (its last stage's model)."""
  if os.path.isfile(os.path.join(path, "config.json")):
    return path
  for stage in ("qa", "anomaly"):
    candidate = os.path.join(path, stage, MODEL_DIR)
    if os.path.isfile(os.path.join(candidate, "config.json")):
      return candidate
  raise CheckpointError(f"{path} is neither an AA-Moondream model directory nor a training workdir with one "
                        f"(<workdir>/qa/model or <workdir>/anomaly/model)")


def load_model(path: str) -> TrainedAAMoondream:
  from aajax import model_dir
  from aajax.aa_moondream import tokenizer as tok_lib
  from aajax.vlm.moondream import to_device
  path = find_model_dir(path)
  kind, meta = model_dir.read_model_config(path)
  if kind != KIND:
    raise CheckpointError(f"{path} holds a {kind!r} model, expected an AA-Moondream model ({KIND!r})")
  try:
    base, source, qa = meta["base"], meta["source"], meta["qa"]
  except (KeyError, TypeError) as e:
    raise CheckpointError(f"{path}/config.json lacks {e}") from None
  model, params = model_dir.load_model(path, expect_kind=KIND)
  cfg, params = model.cfg, to_device(params)
  if base.get("init"):
    moondream = to_device(model_dir.load_params(base["init"]))
  elif "moondream" in params:
    moondream = params["moondream"]
  else:
    raise CheckpointError(f"{path} has neither a base model path nor its base params")
  tokenizer = tok_lib.load_tokenizer(path, cfg.moondream.tokenizer)
  return TrainedAAMoondream(cfg, moondream, params.get("head"), params.get("lora"), tokenizer, source, qa, base)


def from_moondream_dir(path: str) -> TrainedAAMoondream:
  """A plain converted Moondream directory as an AA-Moondream without head or LoRA (the base model)."""
  from aajax.aa_moondream import tokenizer as tok_lib
  from aajax.model_dir import load_params, read_model_config
  from aajax.vlm.config import MoondreamConfig
  from aajax.vlm.moondream import to_device
  kind, cfg = read_model_config(path)
  if kind != "moondream":
    raise CheckpointError(f"{path} holds a {kind!r} model, expected a Moondream or AA-Moondream model")
  md = MoondreamConfig.from_dict(cfg)
  aa = AAMoondreamConfig(md, image_adapt_until=0, levels=(md.vision.enc_n_layers,))
  return TrainedAAMoondream(aa, to_device(load_params(path)), None, None,
                            tok_lib.load_tokenizer(path, md.tokenizer), {"kind": "none"},
                            {"max_boxes": 3, "map_threshold": 0.5}, {"init": path, "seed": 0})


def load_any(path: str) -> TrainedAAMoondream:
  """An AA-Moondream model directory or workdir, or a plain converted Moondream directory."""
  from aajax.model_dir import read_model_config
  if os.path.isfile(os.path.join(path, "config.json")) and read_model_config(path)[0] == "moondream":
    return from_moondream_dir(path)
  return load_model(path)


def write_variant(trained: TrainedAAMoondream, path: str) -> str:
  """The stage-B LoRA as a Moondream variant `.pt` (`aajax.vlm.lora_variant`), scale folded in."""
  from aajax.vlm import lora_variant
  if trained.lora is None:
    raise CheckpointError("this model has no decoder LoRA (train stage 'qa' first)")
  state = lora_variant.to_variant_state(trained.lora, trained.cfg.lora.scale, trained.moondream["text"])
  return lora_variant.save_variant(path, state)
