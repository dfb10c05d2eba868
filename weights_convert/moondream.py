"""Moondream checkpoints (`model.safetensors`, a shard index, or a directory) -> aajax model directory.

    python -m weights_convert.moondream --src <model.safetensors | dir> --dst <dir> \
        [--config moondream2|moondream2-2025-04-14|moondream2-2025-01-09|moondream05|moondream3] \
        [--tokenizer <tokenizer.json>] [--overwrite]

Layouts read (torch `[out, in]` weights, transposed here):
  * HF release names, `model.` prefix stripped: `vision.*`, `text.*`, `region.*` (Moondream 2, 0.5B, 3).
  * Legacy training names (`vision_encoder.encoder.model.visual.*`, `text_model.transformer.h.*`,
    `region_model.*`), with `._orig_mod` infixes; their Fourier feature matrices are stored transposed.
    Moondream 3 training names too: `h.i.gate` (router), `h.i.mlp.experts` / `output_experts`,
    `h.i.tau_wq` / `tau_wv` / `tau_alpha` (or a fused `tau_wqwv`), `region_model.{coordinate,size}_head`.
  * The int4 at-rest format (`<linear>.weight.{packed,scale,zero_point}`), dequantised here.
Without --config the generation is inferred from the tensors (MoE experts -> moondream3, 1024-wide
text -> moondream05, otherwise moondream2); the tokenizer generation and size scale of an older
Moondream 2 cannot be seen in the weights, so pass --config for those checkpoints.
"""
import argparse
import json
import os
import sys
from collections.abc import Mapping
from typing import Callable, Iterator

import numpy as np

from aajax.errors import AajaxError, CheckpointError
from aajax.vlm.config import MoondreamConfig, get_config
from weights_convert.common import linear_rows, norm_rows

Row = tuple[tuple[str, ...], str, str]  # (flax path, checkpoint name, transform)

# transform name -> (checkpoint -> flax, flax -> checkpoint)
TRANSFORMS: dict[str, tuple[Callable, Callable]] = {
    "id": (lambda t: t, lambda f: f),
    "T": (lambda t: t.T, lambda f: f.T),
    "T3": (lambda t: t.transpose(0, 2, 1), lambda f: f.transpose(0, 2, 1)),  # per-expert [E, out, in]
}


def _mlp(path, name):
  yield from linear_rows(path + ("fc1",), f"{name}.fc1")
  yield from linear_rows(path + ("fc2",), f"{name}.fc2")


def vision_rows(cfg: MoondreamConfig) -> Iterator[Row]:
  p = ("vision",)
  yield from linear_rows(p + ("patch_emb",), "vision.patch_emb")
  yield p + ("pos_emb",), "vision.pos_emb", "id"
  for i in range(cfg.vision.enc_n_layers):
    b, n = p + (f"blocks_{i}",), f"vision.blocks.{i}"
    yield from norm_rows(b + ("ln1",), f"{n}.ln1")
    yield from linear_rows(b + ("attn", "qkv"), f"{n}.attn.qkv")
    yield from linear_rows(b + ("attn", "proj"), f"{n}.attn.proj")
    yield from norm_rows(b + ("ln2",), f"{n}.ln2")
    yield from _mlp(b + ("mlp",), f"{n}.mlp")
  yield from norm_rows(p + ("post_ln",), "vision.post_ln")
  yield from _mlp(p + ("proj_mlp",), "vision.proj_mlp")


def text_rows(cfg: MoondreamConfig) -> Iterator[Row]:
  t, p = cfg.text, ("text",)
  yield p + ("wte",), "text.wte", "id"
  for i in range(t.n_layers):
    b, n = p + (f"blocks_{i}",), f"text.blocks.{i}"
    yield from norm_rows(b + ("ln",), f"{n}.ln")
    yield from linear_rows(b + ("attn", "qkv"), f"{n}.attn.qkv")
    yield from linear_rows(b + ("attn", "proj"), f"{n}.attn.proj")
    if t.tau:
      yield b + ("attn", "tau", "wq"), f"{n}.attn.tau.wq", "T"
      yield b + ("attn", "tau", "wv"), f"{n}.attn.tau.wv", "T"
      yield b + ("attn", "tau", "alpha"), f"{n}.attn.tau.alpha", "id"
    if t.is_moe_layer(i):
      yield from linear_rows(b + ("mlp", "router"), f"{n}.mlp.router")
      yield b + ("mlp", "fc1"), f"{n}.mlp.fc1.weight", "T3"
      yield b + ("mlp", "fc2"), f"{n}.mlp.fc2.weight", "T3"
    else:
      yield from _mlp(b + ("mlp",), f"{n}.mlp")
  yield from norm_rows(p + ("post_ln",), "text.post_ln")
  yield from linear_rows(p + ("lm_head",), "text.lm_head")


def region_rows(cfg: MoondreamConfig) -> Iterator[Row]:
  p = ("region",)
  yield p + ("coord_features",), "region.coord_features", "id"
  yield p + ("size_features",), "region.size_features", "id"
  yield from linear_rows(p + ("coord_encoder",), "region.coord_encoder")
  yield from linear_rows(p + ("size_encoder",), "region.size_encoder")
  for head in ("coord_decoder", "size_decoder"):
    if cfg.region.inner_dim is None:  # Moondream 3: LayerNorm + one Linear per head
      yield from linear_rows(p + (head,), f"region.{head}")
    else:
      yield from _mlp(p + (head,), f"region.{head}")
  if cfg.region.inner_dim is None:
    yield from norm_rows(p + ("ln",), "region.ln")


def moondream_rows(cfg: MoondreamConfig) -> list[Row]:
  return list(vision_rows(cfg)) + list(text_rows(cfg)) + list(region_rows(cfg))


# -- lazily read checkpoints --------------------------------------------------------------------
class LazyState(Mapping):
  """{name: tensor} whose tensors are read (as float32 numpy, ints kept) only when indexed, so a
  conversion holds the output params plus one tensor, not the whole checkpoint twice."""

  def __init__(self, loaders: dict, shapes: dict):
    self._loaders, self._shapes = loaders, shapes

  def __getitem__(self, name):
    return self._loaders[name]()

  def __contains__(self, name):   # Mapping's default reads the tensor (all of text.wte) to answer
    return name in self._loaders

  def __iter__(self):
    return iter(self._loaders)

  def __len__(self):
    return len(self._loaders)

  def shape(self, name) -> tuple:
    return tuple(self._shapes[name])


def as_lazy(state) -> LazyState:
  if isinstance(state, LazyState):
    return state
  return LazyState({k: (lambda v=v: np.asarray(v)) for k, v in state.items()},
                   {k: np.shape(v) for k, v in state.items()})


def lazy_safetensors(path: str) -> LazyState:
  from safetensors import SafetensorError, safe_open
  from weights_convert.common import require_file
  require_file(path, "safetensors file")
  try:
    with safe_open(path, framework="pt") as f:
      shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
  except (SafetensorError, OSError, ValueError) as e:
    raise CheckpointError(f"cannot read safetensors file {path}: {e}") from None

  def load(name):
    with safe_open(path, framework="pt") as f:
      t = f.get_tensor(name)
    return (t.float() if t.is_floating_point() else t).numpy()
  return LazyState({k: (lambda k=k: load(k)) for k in shapes}, shapes)


# -- name normalisation -------------------------------------------------------------------------
_LEGACY_PREFIXES = [
    ("vision_encoder.encoder.model.visual.patch_embed.linear.", "vision.patch_emb."),
    ("vision_encoder.encoder.model.visual.pos_embed", "vision.pos_emb"),
    ("vision_encoder.encoder.model.visual.norm.", "vision.post_ln."),
    ("vision_encoder.encoder.model.visual.blocks.", "vision.blocks."),
    ("vision_encoder.projection.mlp.", "vision.proj_mlp."),
    ("text_model.transformer.embd.wte.weight", "text.wte"),
    ("text_model.transformer.h.", "text.blocks."),
    ("text_model.lm_head.ln.", "text.post_ln."),
    ("text_model.lm_head.linear.", "text.lm_head."),
    ("region_model.coordinate_encoder.", "region.coord_encoder."),
    ("region_model.coordinate_decoder.", "region.coord_decoder."),
    ("region_model.size_encoder.", "region.size_encoder."),
    ("region_model.size_decoder.", "region.size_decoder."),
    # Moondream 3 training names (M87's inference engine): region heads and their LayerNorm
    ("region_model.coordinate_head.", "region.coord_decoder."),
    ("region_model.size_head.", "region.size_decoder."),
    ("region_model.ln.", "region.ln."),
]
_LEGACY_INFIXES = [(".norm1.", ".ln1."), (".norm2.", ".ln2."), (".mixer.Wqkv.", ".attn.qkv."),
                   (".mixer.out_proj.", ".attn.proj."),
                   # Moondream 3 training names: router, experts, tau
                   (".gate.", ".mlp.router."), (".mlp.experts.weight", ".mlp.fc1.weight"),
                   (".mlp.output_experts.weight", ".mlp.fc2.weight"), (".tau_wq", ".attn.tau.wq"),
                   (".tau_wv", ".attn.tau.wv"), (".tau_alpha", ".attn.tau.alpha")]


def normalise_names(state) -> LazyState:
  """Any supported layout -> HF release names (`vision.*`, `text.*`, `region.*`)."""
  state = as_lazy(state)
  loaders, shapes = {}, {}

  def add(name, key, loader, shape):
    if name in loaders:
      raise CheckpointError(f"checkpoint holds {name!r} twice (as {key!r} and another name)")
    loaders[name], shapes[name] = loader, shape

  for key in state:
    name = key.replace("._orig_mod", "")
    if name.startswith("model."):
      name = name[len("model."):]
    load, shape = (lambda key=key: state[key]), state.shape(key)
    if name in ("region_model.coordinate_features.weight", "region_model.size_features.weight"):
      load, shape = (lambda key=key: state[key].T), shape[::-1]  # legacy [F, k] -> [k, F]
      name = "region.coord_features" if "coordinate" in name else "region.size_features"
    for old, new in _LEGACY_PREFIXES:
      if name.startswith(old):
        name = new + name[len(old):]
        break
    if name.startswith("text.blocks.") and name.endswith(".tau_wqwv"):  # fused: wq rows, then wv rows
      base, h = name[:-len(".tau_wqwv")], shape[0] // 2
      add(f"{base}.attn.tau.wq", key, lambda key=key, h=h: state[key][:h], (h,) + shape[1:])
      add(f"{base}.attn.tau.wv", key, lambda key=key, h=h: state[key][h:], (h,) + shape[1:])
      continue
    if name.startswith(("vision.blocks.", "text.blocks.")):
      for a, b in _LEGACY_INFIXES:
        name = name.replace(a, b)
    add(name, key, load, shape)
  return LazyState(loaders, shapes)


def dequantize_int4(packed, scale, zero_point, shape):
  """The int4 at-rest format: row r of `packed` holds group r (high nibble) and r + N/2 (low nibble)."""
  packed = np.asarray(packed, np.uint8)
  q = np.concatenate([packed >> 4, packed & 0x0F], axis=0).astype(np.float32)
  w = (q - np.asarray(zero_point, np.float32)) * np.asarray(scale, np.float32)
  return w.reshape(shape)


def dequantize_state(state: LazyState, cfg: MoondreamConfig) -> LazyState:
  """Replace every `X.weight.{packed,scale,zero_point}` triple by a float `X.weight` (read lazily)."""
  shapes = expected_state_shapes(cfg)
  loaders = {k: (lambda k=k: state[k]) for k in state}
  out_shapes = {k: state.shape(k) for k in state}
  for key in [k for k in state if k.endswith(".weight.packed")]:
    base = key[:-len(".packed")]
    parts = [key, f"{base}.scale", f"{base}.zero_point"]
    if any(p not in loaders for p in parts):
      raise CheckpointError(f"int4 tensor {base} lacks its scale or zero_point")
    if base not in shapes:
      raise CheckpointError(f"int4 tensor {base} is not a weight of this model")
    for p in parts:
      del loaders[p], out_shapes[p]
    loaders[base] = lambda p=parts, shape=shapes[base]: dequantize_int4(*(state[k] for k in p), shape)
    out_shapes[base] = shapes[base]
  return LazyState(loaders, out_shapes)


# -- shapes and inference of the generation -----------------------------------------------------
def expected_params_shapes(cfg: MoondreamConfig) -> dict:
  from aajax.vlm.model import param_shapes
  return param_shapes(cfg)


def expected_state_shapes(cfg: MoondreamConfig) -> dict:
  """{checkpoint name: shape} of the release layout for a config."""
  shapes = expected_params_shapes(cfg)
  return {name: tuple(TRANSFORMS[tr][1](np.empty(shapes[path], np.uint8)).shape)
          for path, name, tr in moondream_rows(cfg)}


def infer_config(state: dict) -> MoondreamConfig:
  if "text.blocks.0.attn.qkv.weight" not in state:
    raise CheckpointError("not a Moondream checkpoint: no text.blocks.0.attn.qkv.weight "
                          f"(first names: {', '.join(sorted(state)[:4])})")
  if any(k.endswith(".mlp.router.weight") for k in state):
    n_layers = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("text.blocks."))
    return get_config("moondream3") if n_layers == 24 else _reduced_md3(n_layers)
  if state.shape("text.wte")[1] == 1024:
    return get_config("moondream05")
  return get_config("moondream2")


def _reduced_md3(n_layers):
  from aajax.vlm.config import moondream3
  return moondream3(n_layers).validate()


def check_generation(state: dict, cfg: MoondreamConfig, source: str):
  """A one-line error when the checkpoint is of another generation than the config."""
  has_moe = any(k.endswith(".mlp.router.weight") for k in state)
  has_tau = any(".attn.tau." in k for k in state)
  if has_moe != (cfg.text.moe is not None) or has_tau != cfg.text.tau:
    found = "Moondream 3 (MoE, tau)" if has_moe else "Moondream 2 / 0.5B (dense)"
    want = "Moondream 3" if cfg.text.moe is not None else "Moondream 2 / 0.5B"
    raise CheckpointError(f"{source} is a {found} checkpoint but the config is {want}; "
                          f"pass the matching --config")
  width = state.shape("text.wte")[1] if "text.wte" in state else cfg.text.dim
  if width != cfg.text.dim:
    raise CheckpointError(f"{source} has text width {width} but the config has {cfg.text.dim} "
                          f"(Moondream 0.5B is 1024, Moondream 2/3 2048); pass the matching --config")


# -- reading ------------------------------------------------------------------------------------
def read_checkpoint(src: str) -> LazyState:
  """A `.safetensors` file, a shard index, a `.pt`, or a directory holding one -> lazy flat state."""
  from weights_convert.common import read_torch_state, require_file
  require_file(src, "Moondream checkpoint")
  if os.path.isdir(src):
    for name in ("model.safetensors.index.json", "model.safetensors"):
      if os.path.exists(os.path.join(src, name)):
        return read_checkpoint(os.path.join(src, name))
    found = [n for n in sorted(os.listdir(src)) if n.endswith(".safetensors")]
    if len(found) == 1:
      return read_checkpoint(os.path.join(src, found[0]))
    raise CheckpointError(f"{src} holds no model.safetensors (or index); found: {found or 'nothing'}")
  if src.endswith(".index.json"):
    try:
      with open(src) as f:
        shards = sorted(set(json.load(f)["weight_map"].values()))
    except (json.JSONDecodeError, KeyError, TypeError, OSError) as e:
      raise CheckpointError(f"corrupt shard index {src}: {e}") from None
    loaders, shapes = {}, {}
    for shard in shards:
      part = lazy_safetensors(os.path.join(os.path.dirname(src), shard))
      loaders.update({k: (lambda k=k, part=part: part[k]) for k in part})
      shapes.update({k: part.shape(k) for k in part})
    return LazyState(loaders, shapes)
  if src.endswith((".pt", ".pth", ".bin")):
    return as_lazy(read_torch_state(src))
  return lazy_safetensors(src)


def convert_state(state, cfg: MoondreamConfig | None = None, source: str = "checkpoint"):
  """Flat checkpoint state (dict or LazyState) -> (config, nested float32 params as jax arrays)."""
  from weights_convert.common import apply_table
  state = normalise_names(state)
  cfg = cfg or infer_config(state)
  check_generation(state, cfg, source)
  state = dequantize_state(state, cfg)
  params = apply_table(state, moondream_rows(cfg), expected_params_shapes(cfg), TRANSFORMS, source)
  return cfg, _to_device(params)


def _to_device(tree):
  """Host views -> device arrays, one leaf at a time (each host tensor is freed once copied):
  peak memory stays at one model, and orbax writes device arrays without another copy."""
  import jax
  for key, leaf in tree.items():
    if isinstance(leaf, dict):
      _to_device(leaf)
    else:
      tree[key] = jax.device_put(np.ascontiguousarray(leaf))
  return tree


def params_to_state(params, cfg: MoondreamConfig, dtype=np.float32) -> dict:
  """Nested params -> release-layout checkpoint state (writes test checkpoints; exports)."""
  from aajax.params import flatten
  flat = flatten(params)
  return {name: np.ascontiguousarray(TRANSFORMS[tr][1](np.asarray(flat[path], np.float32))).astype(dtype)
          for path, name, tr in moondream_rows(cfg)}


def convert(src: str, dst: str, config: str | None = None, tokenizer: str | None = None, overwrite=False):
  from aajax.model_dir import save_model
  cfg = get_config(config) if config else None
  cfg, params = convert_state(read_checkpoint(src), cfg, src)
  save_model(dst, "moondream", cfg.to_dict(), params, source=os.path.abspath(src), overwrite=overwrite)
  tok = tokenizer or _sibling_tokenizer(src)
  if tok:
    import shutil
    shutil.copyfile(tok, os.path.join(dst, "tokenizer.json"))
  return cfg


def _sibling_tokenizer(src: str):
  folder = src if os.path.isdir(src) else os.path.dirname(src)
  path = os.path.join(folder, "tokenizer.json")
  return path if os.path.exists(path) else None


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--src", required=True, help="model.safetensors, a shard index, or a directory")
  ap.add_argument("--dst", required=True, help="output model directory")
  ap.add_argument("--config", default=None, help="named config (default: inferred from the tensors)")
  ap.add_argument("--tokenizer", default=None, help="tokenizer.json to copy (default: next to --src)")
  ap.add_argument("--overwrite", action="store_true")
  args = ap.parse_args(argv)
  try:
    cfg = convert(args.src, args.dst, args.config, args.tokenizer, args.overwrite)
  except AajaxError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  kind = "Moondream 3" if cfg.text.moe else f"Moondream (text width {cfg.text.dim})"
  print(f"wrote {kind} to {args.dst}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
