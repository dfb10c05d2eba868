"""OpenAI / OpenCLIP CLIP state dicts (`visual.*`, `transformer.*`, ...) <-> aajax two-tower params.

Differences from the HF names: fused `attn.in_proj_weight/bias` (rows q, k, v), `mlp.c_fc/c_proj`,
and the raw projection matrices `visual.proj` and `text_projection`, already `[in, out]` (no
transpose). OpenAI's TorchScript archives also carry `input_resolution`, `context_length` and
`vocab_size` scalars, which are not parameters.
"""
from typing import Iterator

from aajax.encoders.config import TwoTowerConfig
from weights_convert.common import linear_rows, norm_rows
from weights_convert.hf_towers import Row

IGNORED = ("input_resolution", "context_length", "vocab_size", "attn_mask")


def _blocks(path, prefix, depth) -> Iterator[Row]:
  for i in range(depth):
    p, n = path + (f"layers_{i}",), f"{prefix}.resblocks.{i}"
    yield from norm_rows(p + ("ln1",), f"{n}.ln_1")
    for part, proj in zip("qkv", ("q_proj", "k_proj", "v_proj")):
      yield p + ("attn", proj, "kernel"), f"{n}.attn.in_proj_weight", f"in_{part}"
      yield p + ("attn", proj, "bias"), f"{n}.attn.in_proj_bias", f"in_{part}_bias"
    yield from linear_rows(p + ("attn", "out_proj"), f"{n}.attn.out_proj")
    yield from norm_rows(p + ("ln2",), f"{n}.ln_2")
    yield from linear_rows(p + ("mlp", "fc1"), f"{n}.mlp.c_fc")
    yield from linear_rows(p + ("mlp", "fc2"), f"{n}.mlp.c_proj")


def openai_rows(cfg: TwoTowerConfig) -> list[Row]:
  v, t = ("vision",), ("text",)
  rows = [(v + ("embedding", "kernel"), "visual.conv1.weight", "conv"),
          (v + ("pos_embedding",), "visual.positional_embedding", "id"),
          (v + ("cls_token",), "visual.class_embedding", "id")]
  rows += norm_rows(v + ("ln_pre",), "visual.ln_pre")
  rows += _blocks(v, "visual.transformer", cfg.vision.depth)
  rows += norm_rows(v + ("ln_post",), "visual.ln_post")
  rows.append((v + ("proj", "kernel"), "visual.proj", "id"))
  rows += [(t + ("token_embedding", "embedding"), "token_embedding.weight", "id"),
           (t + ("pos_embedding",), "positional_embedding", "id")]
  rows += _blocks(t, "transformer", cfg.text.depth)
  rows += norm_rows(t + ("ln_final",), "ln_final")
  rows.append((t + ("head", "kernel"), "text_projection", "id"))
  rows.append((("logit_scale",), "logit_scale", "scalar0"))
  if cfg.logit_bias:  # open_clip models trained with a sigmoid loss
    rows.append((("logit_bias",), "logit_bias", "scalar"))
  return rows
