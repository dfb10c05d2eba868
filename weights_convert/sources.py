"""Read the checkpoint a user points `--src` at, whatever its container, as one flat tensor dict.

Accepted sources:
  * an HF model directory: `config.json` plus `model.safetensors`, sharded `model-0000x-of-0000n.safetensors`
    with `model.safetensors.index.json`, or `pytorch_model.bin` (sharded the same way);
  * a single `.safetensors`, `.bin`, `.pt` or `.pth` file: a state dict, a training checkpoint wrapping
    one, or a TorchScript archive (OpenAI's released CLIP files);
  * a big_vision `.npz` (flat `params/img/...` keys, loop or scanned layout).

The naming scheme ("hf", "openai", "big_vision") is recognised from the tensor names, never from the
file name, so a renamed file still converts and a wrong one is refused with a reason.
"""
import dataclasses
import glob
import json
import os
import zipfile

import numpy as np

from aajax.errors import CheckpointError
from weights_convert.common import read_safetensors, read_torch_state, require_file

# Files that make up a tokenizer, copied next to the converted params.
TOKENIZER_FILES = ("spiece.model", "tokenizer.model", "tokenizer.json", "tokenizer_config.json",
                   "special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt")
_WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors",
                 "open_clip_pytorch_model.bin")


@dataclasses.dataclass
class Source:
  state: dict              # flat {name: float32 numpy array}
  scheme: str              # "hf" | "openai" | "big_vision"
  path: str
  hf_config: dict | None   # config.json of an HF directory
  tokenizer_dir: str | None  # a directory holding TOKENIZER_FILES, when the source has one


def read_source(src: str) -> Source:
  if not os.path.exists(src):
    raise CheckpointError(f"checkpoint not found: {src}")
  hf_config, tokenizer_dir = None, None
  if os.path.isdir(src):
    state = _read_dir(src)
    hf_config = _read_json(os.path.join(src, "config.json")) if os.path.exists(os.path.join(src, "config.json")) else None
    if any(os.path.exists(os.path.join(src, f)) for f in TOKENIZER_FILES):
      tokenizer_dir = src
  else:
    state = read_file(src)
  state = _strip_wrapper_prefix(state)
  return Source(state, naming_scheme(state, src), src, hf_config, tokenizer_dir)


def read_file(path: str) -> dict:
  require_file(path, "checkpoint file")
  if path.endswith(".npz"):
    return read_npz(path)
  if path.endswith(".safetensors"):
    return read_safetensors(path)
  if _looks_like_npz(path):
    return read_npz(path)
  return read_torch_state(path)


def read_npz(path: str) -> dict:
  if not zipfile.is_zipfile(path):
    raise CheckpointError(f"{path} is not a .npz archive (truncated or another format?)")
  try:
    with np.load(path, allow_pickle=False) as z:
      return {k: np.asarray(z[k], np.float32) if z[k].dtype.kind == "f" else z[k] for k in z.files}
  except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
    raise CheckpointError(f"cannot read .npz checkpoint {path}: {str(e).splitlines()[0]}") from None


def _looks_like_npz(path: str) -> bool:
  if not zipfile.is_zipfile(path):
    return False
  with zipfile.ZipFile(path) as z:
    return all(n.endswith(".npy") for n in z.namelist())


def _read_dir(path: str) -> dict:
  for index in _WEIGHT_INDEXES:
    if os.path.exists(os.path.join(path, index)):
      weight_map = _read_json(os.path.join(path, index)).get("weight_map")
      if not isinstance(weight_map, dict):
        raise CheckpointError(f"{os.path.join(path, index)} has no 'weight_map'")
      state = {}
      for shard in sorted(set(weight_map.values())):
        state.update(read_file(require_file(os.path.join(path, shard), f"shard listed in {index}")))
      return state
  for name in _WEIGHT_FILES:
    if os.path.exists(os.path.join(path, name)):
      return read_file(os.path.join(path, name))
  candidates = sorted(glob.glob(os.path.join(path, "*.safetensors")) + glob.glob(os.path.join(path, "*.bin")))
  if len(candidates) == 1:
    return read_file(candidates[0])
  found = ", ".join(sorted(os.listdir(path))[:10]) or "nothing"
  raise CheckpointError(f"no weights in {path}: expected model.safetensors (or shards with "
                        f"model.safetensors.index.json) or pytorch_model.bin; found {found}")


def _read_json(path: str) -> dict:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise CheckpointError(f"cannot read {path}: {e}") from None


def _strip_wrapper_prefix(state: dict) -> dict:
  # DataParallel / DDP checkpoints prefix every name with "module."; big_vision .npz with "params/".
  for prefix in ("module.", "params/"):
    if state and all(k.startswith(prefix) for k in state):
      state = {k[len(prefix):]: v for k, v in state.items()}
  return state


def naming_scheme(state: dict, src: str = "checkpoint") -> str:
  keys = set(state)
  if any(k.startswith(("vision_model.", "text_model.")) for k in keys):
    return "hf"
  if any(k.startswith("visual.trunk.") for k in keys):
    raise CheckpointError(f"{src} is an open_clip checkpoint with a timm vision trunk, which is not "
                          f"supported; convert the HF or big_vision release of the same model instead")
  if "visual.conv1.weight" in keys or "visual.class_embedding" in keys:
    return "openai"
  if any(k.startswith(("img/", "txt/")) for k in keys):
    return "big_vision"
  sample = ", ".join(sorted(keys)[:5]) or "no tensors"
  raise CheckpointError(f"{src} is not a SigLIP or CLIP checkpoint this converter knows (HF, OpenAI/OpenCLIP "
                        f"or big_vision names expected; found {sample})")
