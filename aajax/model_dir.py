"""Converted-model directories: `config.json` + an orbax checkpoint of the params.

    <dir>/config.json   {"kind": "two_tower", "config": {...}, "source": "..."}
    <dir>/params/       orbax StandardCheckpointer pytree (float32)

`save_model` writes into a temporary sibling directory and renames it into place, so an interrupted
conversion never leaves a half-written model behind. `load_model(dir)` returns (model, params) for
any registered kind; each model family registers its (config class, module class) pair.
"""
import json
import os
import shutil
import tempfile
from typing import Callable

import jax
import numpy as np

from aajax.errors import CheckpointError

# kind -> (config from dict, module from config)
_KINDS: dict[str, tuple[Callable, Callable]] = {}


def register_kind(kind: str, config_from_dict: Callable, module_from_config: Callable):
  _KINDS[kind] = (config_from_dict, module_from_config)


def _ensure_builtin_kinds():
  if "two_tower" not in _KINDS:
    from aajax.encoders.config import TwoTowerConfig
    from aajax.encoders.two_towers import TwoTowerModel
    register_kind("two_tower", TwoTowerConfig.from_dict, TwoTowerModel)
  if "aa" not in _KINDS:
    from aajax.anomaly.config import AAConfig
    from aajax.anomaly.model import AAModel
    register_kind("aa", AAConfig.from_dict, AAModel)
  if "moondream" not in _KINDS:
    from aajax.vlm.config import MoondreamConfig
    from aajax.vlm.model import MoondreamModules
    register_kind("moondream", MoondreamConfig.from_dict, MoondreamModules)
  if "aa_moondream" not in _KINDS:
    # (AAMoondream module, stored params {"head", "lora", "moondream"?}); the base Moondream a
    # directory refers to is resolved by aajax.aa_moondream.exported.load_model
    from aajax.aa_moondream.exported import config_from_meta
    from aajax.aa_moondream.model import AAMoondream
    register_kind("aa_moondream", config_from_meta, AAMoondream)
  if "decoder" not in _KINDS:
    from aajax.decoder.families import config_from_dict
    from aajax.decoder.model import TextDecoder
    register_kind("decoder", config_from_dict, TextDecoder)


def save_model(path: str, kind: str, config_dict: dict, params, source: str = "", overwrite: bool = False,
               extra_files: dict[str, str] | None = None):
  """extra_files: {path inside the model dir: file to copy there} (tokenizer assets), written atomically too."""
  import orbax.checkpoint as ocp
  path = os.path.abspath(path)
  if os.path.exists(path) and not overwrite:
    raise CheckpointError(f"output directory already exists: {path} (pass --overwrite to replace it)")
  parent = os.path.dirname(path)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=os.path.basename(path) + ".tmp-", dir=parent)
  try:
    with open(os.path.join(tmp, "config.json"), "w") as f:
      json.dump({"kind": kind, "config": config_dict, "source": source}, f, indent=2)
    # jax arrays go to orbax as they are: it writes them without a host copy, whereas numpy
    # leaves cost a second copy of the whole tree while saving.
    params = jax.tree.map(lambda a: a if isinstance(a, jax.Array) else np.asarray(a), params)
    # this process alone writes the directory (in a multi-process run orbax would otherwise wait for
    # the others at its barriers); its arrays must be host or process-local ones
    me = jax.process_index()
    alone = ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})
    with ocp.StandardCheckpointer(multiprocessing_options=alone) as ckpt:
      ckpt.save(os.path.join(tmp, "params"), params)
    for rel, src in (extra_files or {}).items():
      os.makedirs(os.path.dirname(os.path.join(tmp, rel)), exist_ok=True)
      shutil.copyfile(src, os.path.join(tmp, rel))
    if os.path.exists(path):
      shutil.rmtree(path)
    os.rename(tmp, path)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def read_model_config(path: str) -> tuple[str, dict]:
  cfg_path = os.path.join(path, "config.json")
  if not os.path.isdir(path):
    raise CheckpointError(f"model directory not found: {path}")
  if not os.path.exists(cfg_path):
    raise CheckpointError(f"{path} is not a converted aajax model (no config.json); "
                          f"convert a checkpoint first with python -m weights_convert.<family>")
  try:
    with open(cfg_path) as f:
      meta = json.load(f)
    return meta["kind"], meta["config"]
  except (json.JSONDecodeError, KeyError, TypeError) as e:
    raise CheckpointError(f"corrupt model config {cfg_path}: {e}") from None


def load_params(path: str, abstract=None):
  import orbax.checkpoint as ocp
  params_dir = os.path.join(os.path.abspath(path), "params")
  if not os.path.isdir(params_dir):
    raise CheckpointError(f"{path} has no params/ directory: the conversion did not finish")
  try:
    with ocp.StandardCheckpointer() as ckpt:
      return ckpt.restore(params_dir, abstract) if abstract is not None else ckpt.restore(params_dir)
  except (ValueError, FileNotFoundError, OSError) as e:
    raise CheckpointError(f"cannot restore params from {params_dir}: {str(e).splitlines()[0]}") from None


def load_model(path: str, expect_kind: str | None = None, **config_overrides):
  """(module, params) from a converted directory. config_overrides, e.g. dtype="bfloat16"."""
  _ensure_builtin_kinds()
  kind, config_dict = read_model_config(path)
  if expect_kind is not None and kind != expect_kind:
    raise CheckpointError(f"{path} holds a {kind!r} model, expected {expect_kind!r}")
  if kind not in _KINDS:
    raise CheckpointError(f"{path} holds an unknown model kind {kind!r}; known: {sorted(_KINDS)}")
  config_from_dict, module_from_config = _KINDS[kind]
  cfg = config_from_dict(config_dict)
  if config_overrides:
    cfg = cfg.replace(**config_overrides)
  return module_from_config(cfg), load_params(path)
