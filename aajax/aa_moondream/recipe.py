"""From a run config's `model` section to an AA-Moondream config, the base Moondream params and the
tokenizer.

    model.init       a converted Moondream model directory (python -m weights_convert.moondream);
                     "" = a random Moondream of the named size (the embedded demo)
    model.moondream  named Moondream config of a random model ("tiny", "moondream2", ...)
    model.vision     VisionConfig fields replacing the named config's (random models only), e.g. a
                     deeper tiny tower at a crop size that shows defects
    model.max_context  > 0: the decoder context of a random model
    model.seed       seed of a random Moondream, shared by every stage so all see the same model
    model.levels, image_adapt_until, ...: AAMoondreamConfig fields; levels () / image_adapt_until -1
                     follow AA-CLIP's layout for the tower's depth (7/14/21/27 and 1-6 on 27 blocks)
"""
import dataclasses

import jax
import ml_collections

from aajax.aa_moondream.config import AAMoondreamConfig, recipe_for_depth
from aajax.errors import ConfigError
from aajax.vlm import config as md_configs

AA_FIELDS = ("levels", "image_adapt_until", "image_adapt_weight", "embed_dim", "projector_relu", "score_scale",
             "det_scale", "topk_fraction", "lora_rank", "lora_alpha")


def model_defaults() -> ml_collections.ConfigDict:
  m = ml_collections.ConfigDict()
  m.init = ""
  m.moondream = "moondream2"
  m.vision = ml_collections.ConfigDict()
  m.max_context = 0
  m.seed = 0
  m.dtype = "float32"
  m.levels = ()
  m.image_adapt_until = -1
  m.image_adapt_weight = 0.1
  m.embed_dim = 768
  m.projector_relu = False
  m.score_scale = 100.0
  m.det_scale = 10.0
  m.topk_fraction = 0.02
  m.lora_rank = 8
  m.lora_alpha = 8.0
  return m


def moondream_config(m) -> md_configs.MoondreamConfig:
  if m.init:
    from aajax.model_dir import read_model_config
    kind, cfg = read_model_config(m.init)
    if kind != "moondream":
      raise ConfigError(f"model.init {m.init} holds a {kind!r} model; AA-Moondream starts from a converted "
                        "Moondream model (python -m weights_convert.moondream)")
    cfg = md_configs.MoondreamConfig.from_dict(cfg)
  else:
    cfg = md_configs.get_config(m.moondream)
    vision = m.vision.to_dict() if hasattr(m.vision, "to_dict") else dict(m.vision or {})
    try:
      if vision:
        cfg = cfg.replace(vision=dataclasses.replace(cfg.vision, **vision))
      if m.max_context:
        cfg = cfg.replace(text=dataclasses.replace(cfg.text, max_context=int(m.max_context)))
    except TypeError as e:
      raise ConfigError(f"model.vision: {e}") from None
  return cfg.replace(dtype=m.dtype).validate()


def aa_config(m) -> AAMoondreamConfig:
  md = moondream_config(m)
  auto = recipe_for_depth(md.vision.enc_n_layers)
  kw = {}
  for field in AA_FIELDS:
    value = m[field]
    if field in auto and (value == () or value == -1 or value is None):
      value = auto[field]
    kw[field] = tuple(value) if field == "levels" else value
  return AAMoondreamConfig(md, **kw)


def base_params(cfg: AAMoondreamConfig, m):
  """Moondream's params {"vision", "text", "region"}: converted weights, or random from model.seed."""
  from aajax.vlm.model import init_params
  if m.init:
    from aajax.model_dir import load_params
    from aajax.vlm.moondream import to_device
    return to_device(load_params(m.init))
  return jax.jit(init_params, static_argnums=0)(cfg.moondream, jax.random.PRNGKey(int(m.seed)))


def base_spec(m) -> dict:
  """How an exported model finds its base Moondream again."""
  return {"init": m.init, "seed": int(m.seed)}


def tokenizer_for(cfg: AAMoondreamConfig, m):
  from aajax.aa_moondream import tokenizer as tok_lib
  if m.init:
    return tok_lib.load_tokenizer(m.init, cfg.moondream.tokenizer)
  return tok_lib.demo_tokenizer(cfg.moondream.text.vocab_size, cfg.moondream.tokenizer)
