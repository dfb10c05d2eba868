"""HF `SiglipModel` / `CLIPModel` state dicts <-> aajax two-tower params.

The mapping is a table of (our path, HF name, transform) rows generated from the config, so the
same table converts in both directions and lists every tensor a checkpoint must have.
"""
from typing import Callable, Iterator

import numpy as np

from aajax.encoders.config import TextConfig, TwoTowerConfig, ViTConfig
from weights_convert.common import linear_rows, norm_rows

Row = tuple[tuple[str, ...], str, str]  # (flax path, torch name, transform)

# transform name -> (torch -> flax, flax -> torch)
TRANSFORMS: dict[str, tuple[Callable, Callable]] = {
    "id": (lambda t: t, lambda f: f),
    "T": (lambda t: t.T, lambda f: f.T),
    "conv": (lambda t: t.transpose(2, 3, 1, 0), lambda f: f.transpose(3, 2, 0, 1)),
    "scalar": (lambda t: t.reshape(()), lambda f: f.reshape(1)),
    "scalar0": (lambda t: t.reshape(()), lambda f: f.reshape(())),
}


def _fused_part(i: int, bias: bool) -> tuple[Callable, Callable]:
  """One third (q, k or v, torch chunk order) of a fused `in_proj_weight [3D, D]` / `in_proj_bias [3D]`.

  Rows naming the fused tensor keep its real name in error messages; slicing never raises, so a
  wrongly shaped tensor is reported with the others instead of crashing the split.
  """
  def to_flax(t):
    n = t.shape[0] // 3
    part = t[i * n:(i + 1) * n]
    return part if bias else part.T

  def to_torch(f):  # the fused shape, for messages
    return np.concatenate([f if bias else f.T] * 3, axis=0)
  return to_flax, to_torch


for _i, _p in enumerate("qkv"):
  TRANSFORMS[f"in_{_p}"] = _fused_part(_i, bias=False)
  TRANSFORMS[f"in_{_p}_bias"] = _fused_part(_i, bias=True)


def _blocks(path, prefix, depth) -> Iterator[Row]:
  for i in range(depth):
    p, n = path + (f"layers_{i}",), f"{prefix}.layers.{i}"
    yield from norm_rows(p + ("ln1",), f"{n}.layer_norm1")
    for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
      yield from linear_rows(p + ("attn", proj), f"{n}.self_attn.{proj}")
    yield from norm_rows(p + ("ln2",), f"{n}.layer_norm2")
    yield from linear_rows(p + ("mlp", "fc1"), f"{n}.mlp.fc1")
    yield from linear_rows(p + ("mlp", "fc2"), f"{n}.mlp.fc2")


def vision_rows(c: ViTConfig, prefix="vision_model", path=("vision",)) -> Iterator[Row]:
  e = f"{prefix}.embeddings"
  yield path + ("embedding", "kernel"), f"{e}.patch_embedding.weight", "conv"
  if c.patch_bias:
    yield path + ("embedding", "bias"), f"{e}.patch_embedding.bias", "id"
  yield path + ("pos_embedding",), f"{e}.position_embedding.weight", "id"
  if c.class_token:
    yield path + ("cls_token",), f"{e}.class_embedding", "id"
  if c.pre_norm:
    yield from norm_rows(path + ("ln_pre",), f"{prefix}.pre_layrnorm")  # sic: HF's spelling
  yield from _blocks(path, f"{prefix}.encoder", c.depth)
  yield from norm_rows(path + ("ln_post",), f"{prefix}.post_layernorm")
  if c.pool == "map":
    h = f"{prefix}.head"
    yield path + ("head", "probe"), f"{h}.probe", "id"
    # The fused in_proj is split into q/k/v rows by `split_fused` before the table is applied.
    for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
      yield from linear_rows(path + ("head", "attn", proj), f"{h}.attention.{proj}")
    yield from norm_rows(path + ("head", "ln"), f"{h}.layernorm")
    yield from linear_rows(path + ("head", "mlp", "fc1"), f"{h}.mlp.fc1")
    yield from linear_rows(path + ("head", "mlp", "fc2"), f"{h}.mlp.fc2")
  if c.proj_dim:
    yield path + ("proj", "kernel"), "visual_projection.weight", "T"


def text_rows(c: TextConfig, prefix="text_model", path=("text",)) -> Iterator[Row]:
  e = f"{prefix}.embeddings"
  yield path + ("token_embedding", "embedding"), f"{e}.token_embedding.weight", "id"
  yield path + ("pos_embedding",), f"{e}.position_embedding.weight", "id"
  yield from _blocks(path, f"{prefix}.encoder", c.depth)
  yield from norm_rows(path + ("ln_final",), f"{prefix}.final_layer_norm")
  if c.family == "siglip":
    yield from linear_rows(path + ("head",), f"{prefix}.head", bias=c.proj_bias)
  else:
    yield from linear_rows(path + ("head",), "text_projection", bias=False)


def two_tower_rows(cfg: TwoTowerConfig) -> list[Row]:
  rows = list(vision_rows(cfg.vision)) + list(text_rows(cfg.text))
  rows.append((("logit_scale",), "logit_scale", "scalar" if cfg.family == "siglip" else "scalar0"))
  if cfg.logit_bias:
    rows.append((("logit_bias",), "logit_bias", "scalar"))
  return rows


def split_fused(state: dict, fused_prefixes: list[str]) -> dict:
  """Split `X.in_proj_weight/bias` [3D, ...] into `X.{q,k,v}_proj.weight/bias` (torch chunk order q, k, v)."""
  out = dict(state)
  for pre in fused_prefixes:
    dot = f"{pre}." if pre else ""
    for kind in ("weight", "bias"):
      key = f"{dot}in_proj_{kind}"
      if key in out:
        for proj, part in zip(("q_proj", "k_proj", "v_proj"), np.split(out.pop(key), 3, axis=0)):
          out[f"{dot}{proj}.{kind}"] = part
  return out


def fuse_split(state: dict, fused_prefixes: list[str]) -> dict:
  """Inverse of split_fused, to write checkpoints in the original layout."""
  out = dict(state)
  for pre in fused_prefixes:
    for kind in ("weight", "bias"):
      parts = [out.pop(f"{pre}.{p}.{kind}") for p in ("q_proj", "k_proj", "v_proj")]
      out[f"{pre}.in_proj_{kind}"] = np.concatenate(parts, axis=0)
  return out
