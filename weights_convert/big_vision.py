"""big_vision SigLIP `.npz` checkpoints (`params/img/...`, `params/txt/...`, `t`, `b`) <-> aajax params.

big_vision is Flax too, so most tensors keep their layout; only the attention kernels change shape
(`[D, H, hd]` and `[H, hd, D]` there, `[D, D]` Dense kernels here) and the position tables lose their
leading batch axis. Checkpoints trained with `scan=True` store the blocks stacked along a leading
depth axis under `encoderblock/...`; `unscan` splits them into the loop layout first.
"""
import re
from typing import Callable, Iterator

import numpy as np

from aajax.encoders.config import TwoTowerConfig
from weights_convert.hf_towers import TRANSFORMS, Row

_SCANNED = re.compile(r"^(img/Transformer|txt/Encoder_0)/encoderblock/(.+)$")


def unscan(state: dict) -> dict:
  """Split stacked `.../encoderblock/<name>` [depth, ...] tensors into `encoderblock_{i}/<name>`."""
  out = {}
  for k, v in state.items():
    m = _SCANNED.match(k)
    if m is None:
      out[k] = v
      continue
    for i in range(v.shape[0]):
      out[f"{m.group(1)}/encoderblock_{i}/{m.group(2)}"] = v[i]
  return out


def scan(state: dict) -> dict:
  """Inverse of `unscan` (used to write scanned checkpoints)."""
  out, stacks = {}, {}
  for k, v in state.items():
    m = re.match(r"^(img/Transformer|txt/Encoder_0)/encoderblock_(\d+)/(.+)$", k)
    if m is None:
      out[k] = v
    else:
      stacks.setdefault(f"{m.group(1)}/encoderblock/{m.group(3)}", {})[int(m.group(2))] = v
  for k, parts in stacks.items():
    out[k] = np.stack([parts[i] for i in range(len(parts))])
  return out


def transforms(cfg: TwoTowerConfig) -> dict[str, tuple[Callable, Callable]]:
  """TRANSFORMS plus the head-dependent reshapes of each tower."""
  out = dict(TRANSFORMS)
  out["posemb"] = (lambda t: t.reshape(t.shape[-2:]) if t.ndim >= 2 else t, lambda f: f[None])
  for tower, heads in (("img", cfg.vision.heads), ("txt", cfg.text.heads)):
    out[f"qkv_{tower}"] = (lambda t: t.reshape(t.shape[0], -1),
                           lambda f, h=heads: f.reshape(f.shape[0], h, -1))
    out[f"qkv_bias_{tower}"] = (lambda t: t.reshape(-1), lambda f, h=heads: f.reshape(h, -1))
    out[f"out_{tower}"] = (lambda t: t.reshape(-1, t.shape[-1]),
                           lambda f, h=heads: f.reshape(h, -1, f.shape[-1]))
  return out


def _dense(path, name):
  yield path + ("kernel",), f"{name}/kernel", "id"
  yield path + ("bias",), f"{name}/bias", "id"


def _norm(path, name):
  yield path + ("scale",), f"{name}/scale", "id"
  yield path + ("bias",), f"{name}/bias", "id"


def _attention(path, name, tower) -> Iterator[Row]:
  for bv, ours in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
    yield path + (ours, "kernel"), f"{name}/{bv}/kernel", f"qkv_{tower}"
    yield path + (ours, "bias"), f"{name}/{bv}/bias", f"qkv_bias_{tower}"
  yield path + ("out_proj", "kernel"), f"{name}/out/kernel", f"out_{tower}"
  yield path + ("out_proj", "bias"), f"{name}/out/bias", "id"


def _mlp(path, name):
  yield from _dense(path + ("fc1",), f"{name}/Dense_0")
  yield from _dense(path + ("fc2",), f"{name}/Dense_1")


def _blocks(path, prefix, depth, tower) -> Iterator[Row]:
  for i in range(depth):
    p, n = path + (f"layers_{i}",), f"{prefix}/encoderblock_{i}"
    yield from _norm(p + ("ln1",), f"{n}/LayerNorm_0")
    yield from _attention(p + ("attn",), f"{n}/MultiHeadDotProductAttention_0", tower)
    yield from _norm(p + ("ln2",), f"{n}/LayerNorm_1")
    yield from _mlp(p + ("mlp",), f"{n}/MlpBlock_0")


def big_vision_rows(cfg: TwoTowerConfig) -> list[Row]:
  v, t = ("vision",), ("text",)
  rows = [(v + ("embedding", "kernel"), "img/embedding/kernel", "id"),
          (v + ("embedding", "bias"), "img/embedding/bias", "id"),
          (v + ("pos_embedding",), "img/pos_embedding", "posemb")]
  rows += _blocks(v, "img/Transformer", cfg.vision.depth, "img")
  rows += _norm(v + ("ln_post",), "img/Transformer/encoder_norm")
  h = "img/MAPHead_0"
  rows.append((v + ("head", "probe"), f"{h}/probe", "id"))
  rows += _attention(v + ("head", "attn"), f"{h}/MultiHeadDotProductAttention_0", "img")
  rows += _norm(v + ("head", "ln"), f"{h}/LayerNorm_0")
  rows += _mlp(v + ("head", "mlp"), f"{h}/MlpBlock_0")
  rows += [(t + ("token_embedding", "embedding"), "txt/Embed_0/embedding", "id"),
           (t + ("pos_embedding",), "txt/pos_embedding", "posemb")]
  rows += _blocks(t, "txt/Encoder_0", cfg.text.depth, "txt")
  rows += _norm(t + ("ln_final",), "txt/Encoder_0/encoder_norm")
  rows += _dense(t + ("head",), "txt/head")
  rows.append((("logit_scale",), "t", "scalar"))
  if cfg.logit_bias:
    rows.append((("logit_bias",), "b", "scalar"))
  return rows
