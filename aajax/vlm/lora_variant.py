"""Moondream's LoRA "variant" files <-> `aajax.nn.lora` adapter trees on the text decoder.

The reference's variant (a torch `.pt` state dict) holds, for every text block i, after its key
renaming (text_model.transformer.h -> text.blocks, .mixer -> .attn, .out_proj -> .proj,
.Wqkv -> .qkv, drop .parametrizations.weight.0):

    text.blocks.<i>.attn.qkv.{A, B}   text.blocks.<i>.attn.proj.{A, B}
    text.blocks.<i>.mlp.fc1.{A, B}    text.blocks.<i>.mlp.fc2.{A, B}

with A [r, in], B [out, r] and delta = (x A^T) B^T, no alpha scaling. qkv, fc1 and fc2 are ordinary
LoRA on those layers: an `aajax.nn.lora` adapter {"a": [in, r], "b": [r, out]} of scale s is the
pair A = a^T, B = s b^T (the scale folded into B on export; imported adapters have scale 1). The proj pair is not: the reference computes it from
the attention *input* (the block's LayerNormed input), not from the attention output that proj
reads, so it is a side branch of the block that no merge into proj's kernel reproduces.

So: an aajax LoRA exports as a variant when its proj adapter is absent (AA-Moondream adapts qkv, fc1,
fc2: `aajax.aa_moondream.config.DECODER_LORA_TARGETS`); the file carries a zero proj pair, which the
reference needs present in every block. A variant imports (merged into the kernels, `merge_variant`)
when its proj pair is zero; a non-zero one is refused with the reason rather than applied wrongly.
"""
import os
import re

import numpy as np

from aajax.errors import CheckpointError, ConfigError

RENAMES = (("text_model.transformer.h", "text.blocks"), (".mixer", ".attn"), (".out_proj", ".proj"),
           (".Wqkv", ".qkv"), (".parametrizations.weight.0", ""))
LAYERS = (("attn", "qkv"), ("attn", "proj"), ("mlp", "fc1"), ("mlp", "fc2"))
_KEY = re.compile(r"^text\.blocks\.(\d+)\.(attn|mlp)\.(qkv|proj|fc1|fc2)\.(A|B)$")


def _layer_shape(text_params, i: int, group: str, name: str) -> tuple[int, int]:
  try:
    kernel = text_params[f"blocks_{i}"][group][name]["kernel"]
  except (KeyError, TypeError):
    raise ConfigError(f"text block {i} has no dense {group}/{name} layer (a MoE block?): Moondream variants "
                      "cover the dense decoder only") from None
  return tuple(kernel.shape)


def n_blocks(text_params) -> int:
  return sum(1 for k in text_params if re.fullmatch(r"blocks_\d+", k))


def to_variant_state(lora, scale: float, text_params) -> dict:
  """An `aajax.nn.lora` tree (adapters on text/blocks_i/...) -> the variant's flat {name: array}."""
  out = {}
  for i in range(n_blocks(text_params)):
    block = (lora or {}).get(f"blocks_{i}", {})
    for group, name in LAYERS:
      fan_in, fan_out = _layer_shape(text_params, i, group, name)
      ad = block.get(group, {}).get(name)
      key = f"text.blocks.{i}.{group}.{name}"
      if ad is None:
        out[f"{key}.A"], out[f"{key}.B"] = np.zeros((1, fan_in), np.float32), np.zeros((fan_out, 1), np.float32)
        continue
      if name == "proj":
        raise ConfigError("a LoRA on attn/proj has no variant equivalent: the reference applies the proj pair "
                          "to the block input, not to the attention output; adapt qkv, fc1 and fc2 only")
      out[f"{key}.A"] = np.ascontiguousarray(np.asarray(ad["a"], np.float32).T)
      out[f"{key}.B"] = np.ascontiguousarray(np.asarray(ad["b"], np.float32).T * np.float32(scale))
  unknown = set(lora or {}) - {f"blocks_{i}" for i in range(n_blocks(text_params))}
  if unknown:
    raise ConfigError(f"LoRA adapters outside the text blocks have no variant equivalent: {sorted(unknown)}")
  return out


def from_variant_state(state: dict) -> dict:
  """A variant's state dict (raw or renamed names) -> an `aajax.nn.lora` tree with scale 1.
  Raises CheckpointError for a non-zero proj pair (see the module docstring) or unknown names."""
  flat = {}
  for key, value in state.items():
    for old, new in RENAMES:
      key = key.replace(old, new)
    m = _KEY.match(key)
    if m is None:
      raise CheckpointError(f"not a Moondream text LoRA variant tensor: {key!r}")
    flat[key] = np.asarray(value.float().numpy() if hasattr(value, "numpy") else value, np.float32)
  tree = {}
  for key in sorted(flat):
    i, group, name, part = _KEY.match(key).groups()
    if part == "B":
      continue
    a, b = flat[key], flat.get(key[:-1] + "B")
    if b is None:
      raise CheckpointError(f"variant tensor {key} has no B")
    if name == "proj":
      if np.any(b @ a):
        raise CheckpointError("the variant adapts attn/proj, which the reference applies to the block input "
                              "(not the attention output); that side branch is not supported")
      continue
    tree.setdefault(f"blocks_{i}", {}).setdefault(group, {})[name] = {"a": a.T, "b": b.T}
  if not tree:
    raise CheckpointError("the variant holds no adapters")
  return tree


def save_variant(path: str, state: dict) -> str:
  """A `.pt` the reference loads (torch.load(weights_only=True) of its renamed names), written atomically."""
  import torch
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}"
  torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}, tmp)
  os.replace(tmp, path)
  return path


def load_variant(path: str) -> dict:
  """A variant `.pt` or `.safetensors` file -> an `aajax.nn.lora` tree (scale 1)."""
  if not os.path.isfile(path):
    raise CheckpointError(f"LoRA variant file not found: {path}")
  if path.endswith(".safetensors"):
    from safetensors.numpy import load_file
    state = load_file(path)
  else:
    import torch
    try:
      state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:   # pickle / zip errors of a file that is not a state dict
      raise CheckpointError(f"cannot read LoRA variant {path}: {str(e).splitlines()[0]}") from None
  if not isinstance(state, dict):
    raise CheckpointError(f"{path} is not a state dict")
  return from_variant_state(state)


def merge_variant(text_params, lora_tree) -> dict:
  """text params with the variant's adapters merged into qkv, fc1 and fc2 (scale 1)."""
  from aajax.nn.lora import LoraConfig, merge
  return merge(text_params, lora_tree, LoraConfig(rank=1, alpha=1.0))   # scale alpha / rank = 1
