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
reference needs present in every block. A variant imports with `apply_variant`: qkv, fc1 and fc2
merged into their kernels, and a non-zero proj pair kept as the decoder's side branch
(`TextConfig.block_input_lora`, params attn/variant_proj_{a,b}: attention output + (h A^T) B^T).
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
  """A variant's state dict (raw or renamed names) -> a tree {"blocks_i": {group: {name: {"a": A^T,
  "b": B^T}}}} of scale 1, proj pairs included (they are not ordinary LoRA: see `apply_variant`)."""
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
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
      raise CheckpointError(f"variant pair {key[:-2]}: A {a.shape} and B {b.shape} are not [r, in] and [out, r]")
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


def apply_variant(cfg, params: dict, tree: dict):
  """(config, params) of a Moondream with a variant applied: qkv, fc1, fc2 merged into the kernels
  (exact: they are ordinary LoRA), a non-zero proj pair as the attention's side branch reading the
  block input (`TextConfig.block_input_lora`; pairs of lower rank are zero-padded to the largest)."""
  import dataclasses

  from aajax.nn.lora import LoraConfig, merge
  if cfg.text.moe is not None:
    raise ConfigError("Moondream variants adapt the dense decoder (Moondream 2 / 0.5B); this model has MoE layers")
  text = params["text"]
  blocks = {f"blocks_{i}" for i in range(n_blocks(text))}
  if set(tree) - blocks:
    raise CheckpointError(f"the variant adapts blocks this model lacks: {sorted(set(tree) - blocks)}")
  ordinary = {blk: {g: {n: ad for n, ad in layers.items() if n != "proj"} for g, layers in groups.items()}
              for blk, groups in tree.items()}
  for blk, groups in tree.items():
    for group, layers in groups.items():
      for name, ad in layers.items():
        shape = _layer_shape(text, int(blk.split("_")[1]), group, name)
        if (ad["a"].shape[0], ad["b"].shape[1]) != shape:
          raise CheckpointError(f"variant pair {blk}/{group}/{name} is {ad['a'].shape[0]} -> {ad['b'].shape[1]}, "
                                f"the model's layer {shape[0]} -> {shape[1]}")
  text = merge(text, ordinary, LoraConfig(rank=1, alpha=1.0))   # scale alpha / rank = 1
  proj = {blk: g["attn"]["proj"] for blk, g in tree.items() if "proj" in g.get("attn", {})}
  proj = {blk: ad for blk, ad in proj.items() if np.any(ad["a"] @ ad["b"])}   # zero pairs: nothing to add
  if not proj:
    return cfg, {**params, "text": text}
  rank = max(ad["a"].shape[1] for ad in proj.values())
  dim = cfg.text.dim
  text = dict(text)
  for blk in sorted(blocks):
    a, b = np.zeros((dim, rank), np.float32), np.zeros((rank, dim), np.float32)
    if blk in proj:
      r = proj[blk]["a"].shape[1]
      a[:, :r], b[:r] = proj[blk]["a"], proj[blk]["b"]
    text[blk] = {**text[blk], "attn": {**text[blk]["attn"], "variant_proj_a": a, "variant_proj_b": b}}
  cfg = cfg.replace(text=dataclasses.replace(cfg.text, block_input_lora=rank))
  return cfg, {**params, "text": text}
