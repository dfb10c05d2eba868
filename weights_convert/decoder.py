"""Decoder-only LMs from HF safetensors (Llama / SmolLM / Mistral / Qwen2, GPT-2) -> aajax model directory.

    python -m weights_convert.decoder --src <dir | model.safetensors | model.safetensors.index.json> \
        --dst <dir> [--hf-config config.json] [--overwrite]

The family comes from `model_type` in `config.json` (next to --src unless --hf-config is given):
  llama, mistral (SmolLM is llama)  -> `families.FAMILIES["llama"]` (Llama's attention_bias / mlp_bias honoured)
  qwen2                             -> "qwen2" (bias on Q, K, V)
  gpt2                              -> "gpt2"
The result is a model directory of kind "decoder" (`aajax.model_dir.load_model` returns a `TextDecoder`
and its params), with the tokenizer files of the source directory copied next to the params.

Layout mapping: torch Linear weights [out, in] are transposed; Llama's q/k/v projections are
concatenated into the fused `attn/qkv` ([Q | K | V], as the decoder splits it) and gate/up into
`mlp/fc1` ([gate | up]); GPT-2's Conv1D weights are stored [in, out] already and go as they are.
Tied embeddings (`tie_word_embeddings`) keep no lm_head. Every tensor is checked by name and shape
against the config before anything is written; the output directory appears atomically.
"""
import argparse
import json
import os
import sys

import numpy as np

from aajax.decoder import families
from aajax.errors import AajaxError, CheckpointError, ConfigError
from aajax.vlm.config import TextConfig
from weights_convert.common import raise_on_mismatch
from weights_convert.moondream import LazyState, _to_device, as_lazy, read_checkpoint
from weights_convert.sources import TOKENIZER_FILES

LLAMA_TYPES = ("llama", "mistral", "qwen2")
MODEL_TYPES = LLAMA_TYPES + ("gpt2",)
# GPT-2 checkpoints may carry the causal-mask buffers of old transformers versions
_BUFFER_SUFFIXES = (".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq")


# -- config.json -> TextConfig --------------------------------------------------------------------
def _get(hf: dict, key: str, default=None, required=True):
  if key in hf and hf[key] is not None:
    return hf[key]
  if required and default is None:
    raise ConfigError(f"config.json lacks {key!r}")
  return default


def _rope_theta(hf: dict) -> float:
  params = hf.get("rope_parameters") or {}
  scaling = hf.get("rope_scaling") or {}
  kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
  if kind != "default":
    raise ConfigError(f"rope type {kind!r} is not supported (only plain rotary embeddings)")
  return float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))


def _llama_config(hf: dict, model_type: str) -> TextConfig:
  dim, heads = _get(hf, "hidden_size"), _get(hf, "num_attention_heads")
  head_dim = hf.get("head_dim") or dim // heads
  if head_dim * heads != dim:
    raise ConfigError(f"head_dim {head_dim} x {heads} heads != hidden_size {dim}: not supported")
  if _get(hf, "hidden_act", "silu") != "silu":
    raise ConfigError(f"hidden_act {hf['hidden_act']!r} is not supported for {model_type} (silu expected)")
  max_context = int(_get(hf, "max_position_embeddings", 2048))
  window = hf.get("sliding_window")
  if window and (model_type == "mistral" or hf.get("use_sliding_window")):
    max_context = min(max_context, int(window))  # within the window, sliding attention is full attention
  fields = families.family_fields("qwen2" if model_type == "qwen2" else "llama")
  if model_type == "llama":
    bias = bool(hf.get("attention_bias", False))
    fields.update(qkv_bias=bias, proj_bias=bias, mlp_bias=bool(hf.get("mlp_bias", False)))
  return families.validate(TextConfig(
      dim=dim, ff_dim=_get(hf, "intermediate_size"), n_layers=_get(hf, "num_hidden_layers"),
      vocab_size=_get(hf, "vocab_size"), max_context=max_context, n_heads=heads,
      n_kv_heads=_get(hf, "num_key_value_heads", heads), rotary_dim=head_dim, rope_theta=_rope_theta(hf),
      ln_eps=float(_get(hf, "rms_norm_eps", 1e-6)), **{**fields, "tie_embeddings": bool(hf.get("tie_word_embeddings", False))}))


def _gpt2_config(hf: dict) -> TextConfig:
  act = _get(hf, "activation_function", "gelu_new")
  if act not in ("gelu_new", "gelu_pytorch_tanh"):
    raise ConfigError(f"GPT-2 activation_function {act!r} is not supported (gelu_new expected)")
  if hf.get("scale_attn_by_inverse_layer_idx") or hf.get("scale_attn_weights") is False:
    raise ConfigError("GPT-2 attention scaling other than 1/sqrt(head_dim) is not supported")
  dim = _get(hf, "n_embd")
  fields = families.family_fields("gpt2")
  fields["tie_embeddings"] = bool(hf.get("tie_word_embeddings", True))
  return families.validate(TextConfig(
      dim=dim, ff_dim=hf.get("n_inner") or 4 * dim, n_layers=_get(hf, "n_layer"), vocab_size=_get(hf, "vocab_size"),
      max_context=_get(hf, "n_positions"), n_heads=_get(hf, "n_head"), n_kv_heads=_get(hf, "n_head"), rotary_dim=0,
      ln_eps=float(_get(hf, "layer_norm_epsilon", 1e-5)), **fields))


def text_config_from_hf(hf: dict) -> TextConfig:
  model_type = hf.get("model_type")
  if model_type not in MODEL_TYPES:
    raise ConfigError(f"unknown model_type {model_type!r} in config.json; supported: {', '.join(MODEL_TYPES)}")
  try:
    return _gpt2_config(hf) if model_type == "gpt2" else _llama_config(hf, model_type)
  except (TypeError, ValueError) as e:
    raise ConfigError(f"config.json of {model_type}: {e}") from None


# -- checkpoint names -----------------------------------------------------------------------------
def _hf_rows(t: TextConfig, gpt2: bool) -> list:
  """(flax path, [checkpoint names], expected checkpoint shapes, transform) for every parameter.

  transform "T": torch Linear [out, in] -> kernel [in, out] (after concatenating the parts along out);
  "id": as stored."""
  q, kv = t.n_heads * t.head_dim, t.n_kv_heads * t.head_dim
  rows = [(("wte",), ["wte.weight"] if gpt2 else ["embed_tokens.weight"], [(t.vocab_size, t.dim)], "id")]
  if gpt2:
    rows.append((("wpe",), ["wpe.weight"], [(t.max_context, t.dim)], "id"))
  for i in range(t.n_layers):
    b = (f"blocks_{i}",)
    if gpt2:
      n = f"h.{i}"
      rows += [(b + ("ln", "scale"), [f"{n}.ln_1.weight"], [(t.dim,)], "id"),
               (b + ("ln", "bias"), [f"{n}.ln_1.bias"], [(t.dim,)], "id"),
               (b + ("attn", "qkv", "kernel"), [f"{n}.attn.c_attn.weight"], [(t.dim, 3 * t.dim)], "id"),
               (b + ("attn", "qkv", "bias"), [f"{n}.attn.c_attn.bias"], [(3 * t.dim,)], "id"),
               (b + ("attn", "proj", "kernel"), [f"{n}.attn.c_proj.weight"], [(t.dim, t.dim)], "id"),
               (b + ("attn", "proj", "bias"), [f"{n}.attn.c_proj.bias"], [(t.dim,)], "id"),
               (b + ("ln2", "scale"), [f"{n}.ln_2.weight"], [(t.dim,)], "id"),
               (b + ("ln2", "bias"), [f"{n}.ln_2.bias"], [(t.dim,)], "id"),
               (b + ("mlp", "fc1", "kernel"), [f"{n}.mlp.c_fc.weight"], [(t.dim, t.ff_dim)], "id"),
               (b + ("mlp", "fc1", "bias"), [f"{n}.mlp.c_fc.bias"], [(t.ff_dim,)], "id"),
               (b + ("mlp", "fc2", "kernel"), [f"{n}.mlp.c_proj.weight"], [(t.ff_dim, t.dim)], "id"),
               (b + ("mlp", "fc2", "bias"), [f"{n}.mlp.c_proj.bias"], [(t.dim,)], "id")]
      continue
    n = f"layers.{i}"
    a = f"{n}.self_attn"
    rows += [(b + ("ln", "scale"), [f"{n}.input_layernorm.weight"], [(t.dim,)], "id"),
             (b + ("attn", "qkv", "kernel"), [f"{a}.{p}_proj.weight" for p in "qkv"], [(q, t.dim), (kv, t.dim), (kv, t.dim)], "T"),
             (b + ("attn", "proj", "kernel"), [f"{a}.o_proj.weight"], [(t.dim, q)], "T"),
             (b + ("ln2", "scale"), [f"{n}.post_attention_layernorm.weight"], [(t.dim,)], "id"),
             (b + ("mlp", "fc1", "kernel"), [f"{n}.mlp.gate_proj.weight", f"{n}.mlp.up_proj.weight"],
              [(t.ff_dim, t.dim)] * 2, "T"),
             (b + ("mlp", "fc2", "kernel"), [f"{n}.mlp.down_proj.weight"], [(t.dim, t.ff_dim)], "T")]
    if t.qkv_bias:
      rows.append((b + ("attn", "qkv", "bias"), [f"{a}.{p}_proj.bias" for p in "qkv"], [(q,), (kv,), (kv,)], "id"))
    if t.proj_bias:
      rows.append((b + ("attn", "proj", "bias"), [f"{a}.o_proj.bias"], [(t.dim,)], "id"))
    if t.mlp_bias:
      rows += [(b + ("mlp", "fc1", "bias"), [f"{n}.mlp.gate_proj.bias", f"{n}.mlp.up_proj.bias"], [(t.ff_dim,)] * 2, "id"),
               (b + ("mlp", "fc2", "bias"), [f"{n}.mlp.down_proj.bias"], [(t.dim,)], "id")]
  final = "ln_f" if gpt2 else "norm"
  rows.append((("post_ln", "scale"), [f"{final}.weight"], [(t.dim,)], "id"))
  if gpt2:
    rows.append((("post_ln", "bias"), [f"{final}.bias"], [(t.dim,)], "id"))
  if not t.tie_embeddings:
    rows.append((("lm_head", "kernel"), ["lm_head.weight"], [(t.vocab_size, t.dim)], "T"))
  return rows


def _strip_prefix(state: LazyState, gpt2: bool) -> LazyState:
  """`model.` (Llama, *ForCausalLM) / `transformer.` (GPT2LMHeadModel) prefixes off; buffers dropped."""
  prefix = "transformer." if gpt2 else "model."
  loaders, shapes = {}, {}
  for key in state:
    if key.endswith(_BUFFER_SUFFIXES):
      continue
    name = key[len(prefix):] if key.startswith(prefix) else key
    loaders[name], shapes[name] = (lambda key=key: state[key]), state.shape(key)
  return LazyState(loaders, shapes)


def check_state(state: LazyState, rows: list, t: TextConfig, source: str):
  """One CheckpointError naming every missing, wrongly shaped and unexpected tensor."""
  missing, bad = [], []
  for _, names, want, _ in rows:
    for name, shape in zip(names, want):
      if name not in state:
        missing.append(name)
      elif state.shape(name) != tuple(shape):
        bad.append(f"{name}: expected {tuple(shape)}, found {state.shape(name)}")
  used = {n for _, names, _, _ in rows for n in names}
  tied_head = {"lm_head.weight"} if t.tie_embeddings else set()  # some tied checkpoints still store it
  extra = sorted(k for k in state if k not in used and k not in tied_head)
  raise_on_mismatch(source, "its config.json", missing, bad, extra)


def convert_state(state, t: TextConfig, source: str = "checkpoint") -> dict:
  """Flat HF state (dict or LazyState) -> nested float32 params of `TextDecoder(t)` (device arrays)."""
  from weights_convert.common import unflatten
  gpt2 = t.position == "learned"
  state = _strip_prefix(as_lazy(state), gpt2)
  rows = _hf_rows(t, gpt2)
  check_state(state, rows, t, source)
  shapes = param_shapes(t)
  flat = {}
  for path, names, _, transform in rows:
    parts = [np.asarray(state[n], np.float32) for n in names]
    value = np.concatenate(parts, axis=0) if len(parts) > 1 else parts[0]
    flat[path] = value.T if transform == "T" else value
    if flat[path].shape != shapes[path]:  # a converter bug, not bad input
      raise AssertionError(f"{'/'.join(path)}: built {flat[path].shape}, model wants {shapes[path]}")
  unfilled = sorted("/".join(p) for p in shapes if p not in flat)
  if unfilled:
    raise AssertionError(f"decoder parameters no checkpoint tensor fills: {unfilled}")
  return _to_device(unflatten(flat))


def param_shapes(t: TextConfig) -> dict:
  """{flax path: shape} of `TextDecoder(t)`, without allocating (forward + logits touch every param)."""
  import jax
  from aajax.decoder.model import TextDecoder
  from aajax.params import flatten
  model = TextDecoder(t)
  init = lambda: model.init(jax.random.PRNGKey(0), np.zeros((1, 1, t.dim), np.float32),
                            method=lambda m, x: m.logits(m(x)["hidden"]))
  return {p: tuple(s.shape) for p, s in flatten(jax.eval_shape(init)["params"]).items()}


def _hf_config_path(src: str, hf_config: str | None) -> str:
  if hf_config:
    return hf_config
  folder = src if os.path.isdir(src) else os.path.dirname(os.path.abspath(src))
  return os.path.join(folder, "config.json")


def read_hf_config(path: str) -> dict:
  if not os.path.exists(path):
    raise CheckpointError(f"config.json not found: {path} (pass --hf-config)")
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise CheckpointError(f"cannot read {path}: {e}") from None


def convert(src: str, dst: str, hf_config: str | None = None, overwrite: bool = False) -> TextConfig:
  from aajax.model_dir import save_model
  if not os.path.exists(src):
    raise CheckpointError(f"checkpoint not found: {src}")
  t = text_config_from_hf(read_hf_config(_hf_config_path(src, hf_config)))
  params = convert_state(read_checkpoint(src), t, src)
  folder = src if os.path.isdir(src) else os.path.dirname(os.path.abspath(src))
  extra = {f: os.path.join(folder, f) for f in TOKENIZER_FILES if os.path.exists(os.path.join(folder, f))}
  save_model(dst, "decoder", families.to_dict(t), params, source=os.path.abspath(src), overwrite=overwrite,
             extra_files=extra)
  return t


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--src", required=True, help="HF model directory, model.safetensors, or a shard index")
  ap.add_argument("--dst", required=True, help="output model directory")
  ap.add_argument("--hf-config", default=None, help="config.json (default: next to --src)")
  ap.add_argument("--overwrite", action="store_true")
  args = ap.parse_args(argv)
  try:
    t = convert(args.src, args.dst, args.hf_config, args.overwrite)
  except AajaxError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"wrote a {t.n_layers}-layer decoder (width {t.dim}, {t.block} {t.norm} {t.mlp} {t.position}) to {args.dst}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
