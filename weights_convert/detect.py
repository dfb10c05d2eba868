"""Recognise the family and size of a two-tower checkpoint from its tensors.

Every size comes from a tensor shape (width, depth, MLP width, patch, grid, vocabulary, text length,
projections). What shapes cannot tell comes from the HF `config.json` when there is one (heads,
activation, LayerNorm eps, native resolution), else from the known named config of the same shape,
else from the family's convention (OpenAI CLIP: 64-d heads; big_vision: the head axis of its kernels).
"""
import dataclasses
import math

from aajax.encoders.config import NAMED_CONFIGS, TwoTowerConfig, clip, siglip
from aajax.errors import CheckpointError, ConfigError

HF_ACTIVATIONS = {"gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh", "gelu_fast": "gelu_tanh",
                  "gelu": "gelu", "quick_gelu": "quick_gelu"}
CONVERTER = {"siglip": "python -m weights_convert.siglip", "clip": "python -m weights_convert.clip"}


def family_of(state: dict, scheme: str) -> str:
  if scheme == "openai":
    return "clip"
  if scheme == "big_vision":
    return "siglip"
  if "vision_model.head.probe" in state or "text_model.head.weight" in state:
    return "siglip"
  if "visual_projection.weight" in state or "vision_model.embeddings.class_embedding" in state:
    return "clip"
  raise CheckpointError("the checkpoint has HF tower names but neither a SigLIP attention-pool head nor a "
                        "CLIP projection; only full two-tower SigLIP/CLIP models are supported")


def require_family(state: dict, scheme: str, family: str, src: str):
  found = family_of(state, scheme)
  if found != family:
    raise CheckpointError(f"{src} is a {found.upper() if found == 'clip' else 'SigLIP'} checkpoint, not "
                          f"{'CLIP' if family == 'clip' else 'SigLIP'}; convert it with {CONVERTER[found]}")


class _Shapes:
  """Shape look-ups that fail with the name of the missing tensor."""

  def __init__(self, state, src):
    self.state, self.src = state, src

  def __call__(self, name, axis=None):
    if name not in self.state:
      raise CheckpointError(f"{self.src}: missing tensor {name}; is this a complete two-tower checkpoint?")
    shape = self.state[name].shape
    return shape if axis is None else shape[axis]

  def count(self, pattern):
    n = 0
    while pattern.format(n) in self.state:
      n += 1
    return n


def _grid(n_pos, prefix, src):
  g = math.isqrt(n_pos - prefix)
  if g * g != n_pos - prefix:
    raise CheckpointError(f"{src}: {n_pos} position embeddings do not form a square patch grid")
  return g


def _dims_hf(s: _Shapes, family):
  v, t = "vision_model", "text_model"
  width, _, patch, _ = s(f"{v}.embeddings.patch_embedding.weight")
  d = dict(width=width, patch=patch, n_pos=s(f"{v}.embeddings.position_embedding.weight", 0),
           depth=s.count(f"{v}.encoder.layers.{{}}.mlp.fc1.weight"), mlp=s(f"{v}.encoder.layers.0.mlp.fc1.weight", 0),
           vocab=s(f"{t}.embeddings.token_embedding.weight", 0), t_width=s(f"{t}.embeddings.token_embedding.weight", 1),
           max_len=s(f"{t}.embeddings.position_embedding.weight", 0),
           t_depth=s.count(f"{t}.encoder.layers.{{}}.mlp.fc1.weight"), t_mlp=s(f"{t}.encoder.layers.0.mlp.fc1.weight", 0))
  if family == "siglip":
    d["t_proj"] = s(f"{t}.head.weight", 0)
  else:
    d["v_proj"], d["t_proj"] = s("visual_projection.weight", 0), s("text_projection.weight", 0)
  d["logit_bias"] = "logit_bias" in s.state
  return d


def _dims_openai(s: _Shapes):
  width, _, patch, _ = s("visual.conv1.weight")
  t_width = s("token_embedding.weight", 1)
  # OpenAI/OpenCLIP build every tower with 64-wide heads.
  return dict(width=width, patch=patch, n_pos=s("visual.positional_embedding", 0),
              depth=s.count("visual.transformer.resblocks.{}.attn.in_proj_weight"),
              mlp=s("visual.transformer.resblocks.0.mlp.c_fc.weight", 0), heads=width // 64,
              vocab=s("token_embedding.weight", 0), t_width=t_width, max_len=s("positional_embedding", 0),
              t_depth=s.count("transformer.resblocks.{}.attn.in_proj_weight"),
              t_mlp=s("transformer.resblocks.0.mlp.c_fc.weight", 0), t_heads=t_width // 64,
              v_proj=s("visual.proj", 1), t_proj=s("text_projection", 1), logit_bias="logit_bias" in s.state)


def _dims_big_vision(s: _Shapes):
  patch, _, _, width = s("img/embedding/kernel")
  blk, tblk = "img/Transformer/encoderblock_0", "txt/Encoder_0/encoderblock_0"
  return dict(width=width, patch=patch, n_pos=s("img/pos_embedding", 1),
              depth=s.count("img/Transformer/encoderblock_{}/MlpBlock_0/Dense_0/kernel"),
              mlp=s(f"{blk}/MlpBlock_0/Dense_0/kernel", 1),
              heads=s(f"{blk}/MultiHeadDotProductAttention_0/query/kernel", 1),
              vocab=s("txt/Embed_0/embedding", 0), t_width=s("txt/Embed_0/embedding", 1),
              max_len=s("txt/pos_embedding", 1),
              t_depth=s.count("txt/Encoder_0/encoderblock_{}/MlpBlock_0/Dense_0/kernel"),
              t_mlp=s(f"{tblk}/MlpBlock_0/Dense_0/kernel", 1),
              t_heads=s(f"{tblk}/MultiHeadDotProductAttention_0/query/kernel", 1),
              t_proj=s("txt/head/kernel", 1), logit_bias="b" in s.state)


def _base(family, d, image_size) -> TwoTowerConfig:
  if family == "siglip":
    return siglip(d["width"], d["depth"], 1, d["mlp"], d["patch"], image_size, d["max_len"], d["vocab"])
  return clip(d["width"], d["depth"], 1, d["patch"], image_size, d["t_width"], d["t_depth"], 1, d["v_proj"],
              vocab=d["vocab"], text_len=d["max_len"])


def _same_shapes(a: TwoTowerConfig, b: TwoTowerConfig) -> bool:
  skip = {"heads", "image_size", "act", "dtype", "remat"}
  fields = lambda c: {f.name: getattr(c, f.name) for f in dataclasses.fields(c) if f.name not in skip}
  return (fields(a.vision) == fields(b.vision) and a.vision.grid == b.vision.grid
          and fields(a.text) == fields(b.text))


def named_match(cfg: TwoTowerConfig) -> tuple[str, TwoTowerConfig] | tuple[None, None]:
  for name, named in NAMED_CONFIGS.items():
    if named.family == cfg.family and _same_shapes(named, cfg):
      return name, named
  return None, None


def infer_config(state: dict, scheme: str, family: str, src: str, hf_config: dict | None = None,
                 act: str | None = None) -> tuple[TwoTowerConfig, str | None]:
  """(config, matching named config or None) of a checkpoint."""
  s = _Shapes(state, src)
  d = {"hf": lambda: _dims_hf(s, family), "openai": lambda: _dims_openai(s), "big_vision": lambda: _dims_big_vision(s)}[scheme]()
  prefix = 1 if family == "clip" else 0
  grid = _grid(d["n_pos"], prefix, src)
  cfg = _base(family, d, grid * d["patch"])
  text_extra = {"proj_dim": d["t_proj"] if d["t_proj"] != d["t_width"] or family == "clip" else None}
  cfg = cfg.replace(text=dataclasses.replace(cfg.text, **text_extra), logit_bias=d["logit_bias"])
  name, named = named_match(cfg)
  vc, tc = (hf_config or {}).get("vision_config") or {}, (hf_config or {}).get("text_config") or {}
  heads = vc.get("num_attention_heads") or d.get("heads") or (named and named.vision.heads)
  t_heads = tc.get("num_attention_heads") or d.get("t_heads") or (named and named.text.heads)
  if not heads or not t_heads:
    raise CheckpointError(f"{src}: cannot tell the number of attention heads from the tensors of this "
                          f"non-standard size; convert the HF directory with its config.json")
  image_size = vc.get("image_size") or (named.vision.image_size if named else grid * d["patch"])
  if image_size // d["patch"] != grid:
    raise CheckpointError(f"{src}: config image_size {image_size} does not match the {grid}x{grid} position table")
  vision = dict(heads=heads, image_size=image_size)
  text = dict(heads=t_heads)
  for tower, conf in ((vision, vc), (text, tc)):
    if "layer_norm_eps" in conf:
      tower["ln_eps"] = conf["layer_norm_eps"]
    if "hidden_act" in conf:
      if conf["hidden_act"] not in HF_ACTIVATIONS:
        raise CheckpointError(f"{src}: unsupported activation {conf['hidden_act']!r} in config.json")
      tower["act"] = HF_ACTIVATIONS[conf["hidden_act"]]
    if act:
      tower["act"] = act
  for tower, dim in ((vision, "width"), (text, "t_width")):
    if d[dim] % tower["heads"]:
      raise CheckpointError(f"{src}: width {d[dim]} is not divisible by {tower['heads']} heads")
  cfg = cfg.replace(vision=dataclasses.replace(cfg.vision, **vision), text=dataclasses.replace(cfg.text, **text))
  return cfg, name


def check_act(act: str | None):
  if act is not None and act not in ("gelu", "quick_gelu", "gelu_tanh"):
    raise ConfigError(f"unknown activation {act!r}; expected gelu, quick_gelu or gelu_tanh")

