"""The language side of AA-Moondream: Moondream's decoder (with LoRA) over image, context and QA.

Training forward (teacher forcing, no KV cache): [BOS, image tokens] (the bidirectional prefix) then
the item's elements (tokens through `wte`, coordinates and sizes through the region encoders),
one decoder pass; the raw hidden state of each element position is read by the LM head (next
token), the coordinate head and the size head, as `aajax.aa_moondream.qa` set their targets.

Images reach the decoder as single crops at the tower's crop size: the global crop and the
"pooled local" crop of a 1 x 1 tiling are the same picture, so the projection reads
[tokens | tokens] (Moondream's own layout for images that fit one crop). Inference encodes images
the same way (`encode_crops`), so training and use agree.

Inference with a context (`generate_greedy`): the image prefix cache from `encode_crops`, then the
context and prompt elements prefilled at once, then greedy decoding with the shared jitted
decoder steps of `aajax.vlm.runtime.MoondreamFns`.
"""
import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import optax

from aajax.aa_moondream import qa as qa_lib
from aajax.decoder import kv_cache as kvc
from aajax.decoder.model import TextDecoder
from aajax.errors import InputError
from aajax.nn import lora as lora_lib
from aajax.region import RegionModel
from aajax.vlm.config import MoondreamConfig
from aajax.vlm.runtime import EncodedImage, MoondreamFns
from aajax.vlm.vision import VisionEncoder


def image_prefix(cfg: MoondreamConfig, params, crops):
  """crops [B, S, S, 3] in [-1, 1] -> [B, 1 + grid**2, dim]: BOS embedding then image tokens."""
  emb = VisionEncoder(cfg.vision).apply({"params": params["vision"]}, crops)
  b = crops.shape[0]
  bos = TextDecoder(cfg.text).apply({"params": params["text"]}, jnp.full((b, 1), cfg.tokenizer.bos_id, jnp.int32),
                                    method=TextDecoder.embed)
  return jnp.concatenate([bos, emb.astype(bos.dtype)], axis=1)


def element_embeddings(cfg: MoondreamConfig, params, kind, token, value):
  """kind/token [B, T], value [B, T, 2] -> [B, T, dim]: token, coordinate or size embeddings."""
  tok = TextDecoder(cfg.text).apply({"params": params["text"]}, token, method=TextDecoder.embed)
  region = RegionModel(cfg.region)
  coord = region.apply({"params": params["region"]}, value[..., :1], method=RegionModel.encode_coordinate)
  size = region.apply({"params": params["region"]}, value, method=RegionModel.encode_size)
  kind = kind[..., None]
  return jnp.where(kind == qa_lib.TOKEN, tok, jnp.where(kind == qa_lib.COORD, coord, size)).astype(tok.dtype)


def _lora_scope(lora, lora_cfg):
  return lora_lib.lora_applied(lora, lora_cfg) if lora else contextlib.nullcontext()


def sequence_hidden(cfg: MoondreamConfig, params, crops, seq, lora=None, lora_cfg=None):
  """Raw decoder hidden states [B, T, dim] of the item elements (after the image prefix)."""
  prefix = jax.lax.stop_gradient(image_prefix(cfg, params, crops))
  x = jnp.concatenate([prefix, element_embeddings(cfg, params, seq["kind"], seq["token"], seq["value"])], axis=1)
  with _lora_scope(lora, lora_cfg):
    hidden = TextDecoder(cfg.text).apply({"params": params["text"]}, x, prefix_len=cfg.prefix_len)["hidden"]
  return hidden[:, prefix.shape[1]:]


def _masked_ce(logits, targets):
  """Mean cross-entropy over positions whose target is not NO_TARGET; (mean, count, correct)."""
  valid = targets != qa_lib.NO_TARGET
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(valid, targets, 0))
  n = valid.sum()
  correct = ((jnp.argmax(logits, -1) == targets) & valid).sum()
  return jnp.where(n > 0, (ce * valid).sum() / jnp.maximum(n, 1), 0.0), n, correct


def sequence_losses(cfg: MoondreamConfig, params, crops, seq, lora=None, lora_cfg=None):
  """(loss, metrics): token CE + region CE (coordinates and sizes, each bin read counted once).
  `lora` (an `aajax.nn.lora` tree over the decoder params, with its `lora_cfg`) runs unmerged."""
  hidden = sequence_hidden(cfg, params, crops, seq, lora, lora_cfg)
  logits = TextDecoder(cfg.text).apply({"params": params["text"]}, hidden, method=TextDecoder.logits)
  token_ce, n_tok, correct = _masked_ce(logits, seq["t_token"])
  region = RegionModel(cfg.region)
  coord_logits = region.apply({"params": params["region"]}, hidden, method=RegionModel.decode_coordinate)
  size_logits = region.apply({"params": params["region"]}, hidden, method=RegionModel.decode_size)
  coord_ce, n_coord, _ = _masked_ce(coord_logits, seq["t_coord"])
  size_ce, n_size, _ = _masked_ce(size_logits, seq["t_size"])
  n_region = n_coord + n_size
  region_ce = jnp.where(n_region > 0, (coord_ce * n_coord + size_ce * n_size) / jnp.maximum(n_region, 1), 0.0)
  loss = token_ce + region_ce
  return loss, {"loss": loss, "token_loss": token_ce, "region_loss": region_ce,
                "token_accuracy": correct / jnp.maximum(n_tok, 1)}


# ------------------------------------------------------------------------------------- inference

def encode_crops(fns: MoondreamFns, params, crops) -> EncodedImage:
  """Normalised single crops [B, S, S, 3] -> the decoder's prefix cache (BOS + image tokens)."""
  cfg = fns.cfg
  tokens = fns.encode_crops(params["vision"], jnp.asarray(crops))
  emb = fns.project(params["vision"], tokens, tokens)
  bos = fns.steps.embed(params["text"], jnp.full((emb.shape[0], 1), cfg.tokenizer.bos_id, jnp.int32))
  x = jnp.concatenate([bos, emb.astype(bos.dtype)], axis=1)
  cache = kvc.init_cache(cfg.text.n_layers, emb.shape[0], cfg.prefix_len, cfg.text.n_kv_heads, cfg.text.head_dim,
                         jnp.dtype(cfg.text.dtype))
  return EncodedImage(fns.steps.prefill(params["text"], x, cache, prefix_len=cfg.prefix_len)["cache"])


_embed_elements = jax.jit(element_embeddings, static_argnums=0)
BUCKET = 16


def generate_greedy(fns: MoondreamFns, params, enc: EncodedImage, items: list, max_tokens: int = 32) -> list:
  """Greedy answers (token id lists) after each row's elements (`qa.Sequence`: context + prompt).

  All rows' elements are prefilled in one step (right padded, per-row lengths), then one decode
  step per token for the batch; rows stop at eos or `max_tokens`."""
  cfg, tok_cfg = fns.cfg, fns.cfg.tokenizer
  b = len(items)
  length = -(-max(len(s) for s in items) // BUCKET) * BUCKET
  arrays = qa_lib.pad_sequences(items, length)
  size = -(-(cfg.prefix_len + length + max_tokens) // 64) * 64
  size = min(size, cfg.text.max_context)
  if cfg.prefix_len + length + max_tokens > cfg.text.max_context:
    raise InputError(f"{length} prompt elements + {max_tokens} answer tokens do not fit the context of "
                     f"{cfg.text.max_context} after the {cfg.prefix_len} image positions")
  x = _embed_elements(cfg, params, jnp.asarray(arrays["kind"]), jnp.asarray(arrays["token"]),
                      jnp.asarray(arrays["value"]))
  cache = kvc.resize_cache(enc.cache, size)
  out = fns.steps.prefill(params["text"], x, cache, jnp.asarray(arrays["lengths"]))
  tokens = np.asarray(jnp.argmax(out["logits"], -1)).astype(np.int32)
  cache = out["cache"]
  zeros, ones = jnp.zeros((b,), jnp.float32), jnp.ones((b,), jnp.float32)
  banned = tuple(i for i in (tok_cfg.answer_id,) if i is not None)
  results = [[] for _ in range(b)]
  active = np.ones((b,), bool)
  for step in range(max_tokens):
    active &= tokens != tok_cfg.eos_id
    if not active.any():
      break
    for i in np.nonzero(active)[0]:
      results[i].append(int(tokens[i]))
    if step + 1 == max_tokens:
      break
    out = fns.steps.decode_tokens(params["text"], jnp.asarray(tokens), cache, jax.random.PRNGKey(0), zeros, ones,
                                  jnp.asarray(active), banned=banned)
    cache, tokens = out["cache"], np.asarray(out["tokens"])
  return results
