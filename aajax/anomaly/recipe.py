"""From a run config's `model` section to an AA model, its parameters and its tokenizer.

    model.backbone   a name of `aajax.encoders.config.NAMED_CONFIGS`, or "" with `model.tower` set
    model.tower      a small tower described by its sizes (the embedded demo): family, width, depth,
                     heads, mlp_dim, patch, image_size, text_len, vocab (and CLIP's text/embed sizes)
    model.init       a converted two-tower model directory (weights_convert.siglip / .clip); "" = random
    model.seed       seed of a random backbone, shared by every stage so all stages see one backbone
    model.image_size, levels, image_adapt_until, text_adapt_until, dpam_mode, dpam_from,
    cross_attention, projector_relu ...: AAConfig fields; levels / image_adapt_until / dpam_from /
                     cross_attn_level left empty (or -1) follow `recipe_for_depth` of the vision tower.
"""
import jax
import ml_collections
import numpy as np

from aajax.anomaly.config import AAConfig, recipe_for_depth
from aajax.anomaly.model import init_params
from aajax.encoders import config as tower_configs
from aajax.encoders.hash_tokenizer import HashTokenizer
from aajax.errors import ConfigError

AUTO_FIELDS = ("levels", "image_adapt_until", "dpam_from", "cross_attn_level")
AA_FIELDS = ("image_size", "text_adapt_until", "text_adapt_weight", "image_adapt_weight", "projector_relu",
             "score_scale", "dpam_mode", "cross_attention", "cross_attn_heads", "cross_attn_dropout") + AUTO_FIELDS


def model_defaults() -> ml_collections.ConfigDict:
  m = ml_collections.ConfigDict()
  m.backbone = ""
  m.tower = ml_collections.ConfigDict()
  m.init = ""
  m.seed = 0
  m.dtype = "float32"
  m.remat = False
  m.remat_policy = "full"     # with remat: full | dots | dots_no_batch (aajax.encoders.vit.REMAT_POLICIES)
  m.image_size = 224
  m.levels = ()
  m.image_adapt_until = -1
  m.text_adapt_until = 3
  m.text_adapt_weight = 0.1
  m.image_adapt_weight = 0.1
  m.projector_relu = False
  m.score_scale = 100.0
  m.dpam_mode = "vv"
  m.dpam_from = -1
  m.cross_attention = False
  m.cross_attn_heads = 8
  m.cross_attn_dropout = 0.1
  m.cross_attn_level = -1
  return m


def _tower_from_sizes(t) -> tower_configs.TwoTowerConfig:
  t = dict(t)
  family = t.pop("family", "siglip")
  try:
    if family == "siglip":
      return tower_configs.siglip(**t)
    if family == "clip":
      return tower_configs.clip(**t)
  except TypeError as e:
    raise ConfigError(f"model.tower: {e}") from None
  raise ConfigError(f"model.tower.family {family!r} unknown; expected 'siglip' or 'clip'")


def backbone_config(m) -> tower_configs.TwoTowerConfig:
  if m.init:
    from aajax.model_dir import read_model_config
    kind, cfg = read_model_config(m.init)
    if kind != "two_tower":
      raise ConfigError(f"model.init {m.init} holds a {kind!r} model; AA training starts from a converted "
                        "two-tower model (python -m weights_convert.siglip / .clip)")
    return tower_configs.TwoTowerConfig.from_dict(cfg)
  if m.backbone:
    return tower_configs.get_config(m.backbone)
  if not m.tower:
    raise ConfigError("set model.backbone (a named tower), model.tower (sizes) or model.init (a converted model)")
  return _tower_from_sizes(m.tower.to_dict() if hasattr(m.tower, "to_dict") else m.tower)


def aa_config(m) -> AAConfig:
  backbone = backbone_config(m).replace(dtype=m.dtype, remat=m.remat, remat_policy=m.get("remat_policy", "full"))
  auto = recipe_for_depth(backbone.vision.depth)
  kw = {}
  for field in AA_FIELDS:
    value = m[field]
    if field in AUTO_FIELDS and (value == () or value == -1 or value is None):
      value = auto[field]
    kw[field] = tuple(value) if field == "levels" else value
  return AAConfig(backbone, **kw)


def initial_params(cfg: AAConfig, m, rng):
  """All AA params: the backbone from `model.init` (or random from `model.seed`), adapters from `rng`."""
  params = jax.jit(init_params, static_argnums=0)(cfg, rng)
  if m.init:
    from aajax.model_dir import load_params
    backbone = load_params(m.init, jax.eval_shape(lambda: params["backbone"]))
  else:
    backbone = jax.jit(init_params, static_argnums=0)(cfg, jax.random.PRNGKey(m.seed))["backbone"]
  return {**params, "backbone": backbone}


def tokenizer_for(cfg: AAConfig, m):
  """The converted model's own tokenizer, or a word-hash tokenizer for a random backbone."""
  if m.init:
    from aajax.encoders import tokenizers
    return tokenizers.load_tokenizer(m.init)
  text = cfg.backbone.text
  return HashTokenizer(cfg.backbone.family, text.vocab_size, text.max_len)


def tokenizer_spec(cfg: AAConfig, m) -> dict:
  """What `launch.infer` needs to rebuild the tokenizer of an exported model."""
  if m.init:
    return {"kind": "model_dir", "path": m.init}
  text = cfg.backbone.text
  return {"kind": "hash", "family": cfg.backbone.family, "vocab_size": text.vocab_size, "max_len": text.max_len}


def tokenizer_from_spec(spec: dict):
  if spec["kind"] == "hash":
    return HashTokenizer(spec["family"], spec["vocab_size"], spec["max_len"])
  from aajax.encoders import tokenizers
  return tokenizers.load_tokenizer(spec["path"])


def as_numpy(tree):
  return jax.tree.map(np.asarray, tree)
