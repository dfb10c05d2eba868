"""Frozen configs of the ViT vision tower, the text tower and the two-tower model.

One model definition, many sizes: SigLIP and CLIP differ only in the fields below. Named real
configs live in `NAMED_CONFIGS`; tests build tiny ones with `dataclasses.replace`.
"""
import dataclasses
import json
from typing import Optional

from aajax.errors import ConfigError

FAMILIES = ("siglip", "clip")


@dataclasses.dataclass(frozen=True)
class ViTConfig:
  family: str = "siglip"
  width: int = 768
  depth: int = 12
  heads: int = 12
  mlp_dim: int = 3072
  patch: int = 16
  image_size: int = 224          # the resolution the position table was trained at
  class_token: bool = False      # CLIP: a learned class token with its own position slot
  pre_norm: bool = False         # CLIP: ln_pre after the embeddings
  patch_bias: bool = True        # SigLIP's patch conv has a bias, CLIP's has none
  act: str = "gelu_tanh"         # "gelu_tanh" (SigLIP), "quick_gelu" (OpenAI CLIP), "gelu" (AA-CLIP)
  ln_eps: float = 1e-6
  pool: str = "map"              # "map" (SigLIP attention-pool head), "cls" (CLIP), "none"
  proj_dim: Optional[int] = None  # CLIP visual projection (no bias)
  posemb_resize: str = "bicubic_aa"  # how positions follow a new grid; see aajax.nn.resize
  dtype: str = "float32"         # compute dtype; params stay float32
  remat: bool = False            # rematerialise blocks in the backward pass
  remat_policy: str = "full"     # what remat keeps: aajax.encoders.vit.REMAT_POLICIES

  @property
  def grid(self) -> int:
    return self.image_size // self.patch

  @property
  def num_prefix_tokens(self) -> int:
    return 1 if self.class_token else 0


@dataclasses.dataclass(frozen=True)
class TextConfig:
  family: str = "siglip"
  width: int = 768
  depth: int = 12
  heads: int = 12
  mlp_dim: int = 3072
  vocab_size: int = 32000
  max_len: int = 64
  act: str = "gelu_tanh"
  ln_eps: float = 1e-6
  causal: bool = False           # CLIP text is causal, SigLIP text is bidirectional
  pool: str = "last"             # "last" (SigLIP, sticky EOS) or "argmax" (CLIP: EOT has the largest id)
  proj_dim: Optional[int] = None  # output width of the head / text_projection; None = width
  proj_bias: bool = True         # SigLIP head has a bias; CLIP text_projection has none
  dtype: str = "float32"
  remat: bool = False
  remat_policy: str = "full"

  @property
  def out_dim(self) -> int:
    return self.proj_dim or self.width


@dataclasses.dataclass(frozen=True)
class TwoTowerConfig:
  vision: ViTConfig
  text: TextConfig
  logit_bias: bool = True        # SigLIP has a learned bias; CLIP does not

  @property
  def family(self) -> str:
    return self.vision.family

  def replace(self, **kw) -> "TwoTowerConfig":
    """Replace fields of both towers at once (dtype, remat, remat_policy) or of the model itself."""
    shared = {k: kw.pop(k) for k in ("dtype", "remat", "remat_policy") if k in kw}
    vision = dataclasses.replace(kw.pop("vision", self.vision), **shared)
    text = dataclasses.replace(kw.pop("text", self.text), **shared)
    return dataclasses.replace(self, vision=vision, text=text, **kw)

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict) -> "TwoTowerConfig":
    d = dict(d)
    try:
      return cls(vision=ViTConfig(**d.pop("vision")), text=TextConfig(**d.pop("text")), **d)
    except TypeError as e:  # an unknown or missing key
      raise ConfigError(f"invalid two-tower config: {e}") from None

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=2)


def siglip(width, depth, heads, mlp_dim, patch, image_size, text_len=64, vocab=32000) -> TwoTowerConfig:
  vision = ViTConfig("siglip", width, depth, heads, mlp_dim, patch, image_size)
  text = TextConfig("siglip", width, depth, heads, mlp_dim, vocab, text_len)
  return TwoTowerConfig(vision, text, logit_bias=True)


def clip(width, depth, heads, patch, image_size, text_width, text_depth, text_heads, embed_dim,
         act="quick_gelu", vocab=49408, text_len=77) -> TwoTowerConfig:
  vision = ViTConfig("clip", width, depth, heads, 4 * width, patch, image_size, class_token=True,
                     pre_norm=True, patch_bias=False, act=act, ln_eps=1e-5, pool="cls", proj_dim=embed_dim)
  text = TextConfig("clip", text_width, text_depth, text_heads, 4 * text_width, vocab, text_len, act=act,
                    ln_eps=1e-5, causal=True, pool="argmax", proj_dim=embed_dim, proj_bias=False)
  return TwoTowerConfig(vision, text, logit_bias=False)


NAMED_CONFIGS = {
    "siglip-base-patch16-224": siglip(768, 12, 12, 3072, 16, 224),
    "siglip-base-patch16-384": siglip(768, 12, 12, 3072, 16, 384),
    "siglip-large-patch16-256": siglip(1024, 24, 16, 4096, 16, 256),
    "siglip-large-patch16-384": siglip(1024, 24, 16, 4096, 16, 384),
    "siglip-so400m-patch14-224": siglip(1152, 27, 16, 4304, 14, 224, text_len=16),
    "siglip-so400m-patch14-384": siglip(1152, 27, 16, 4304, 14, 384),
    "clip-vit-base-patch16": clip(768, 12, 12, 16, 224, 512, 12, 8, 512),
    "clip-vit-large-patch14": clip(1024, 24, 16, 14, 224, 768, 12, 12, 768),
    "clip-vit-large-patch14-336": clip(1024, 24, 16, 14, 336, 768, 12, 12, 768),
}


def get_config(name: str) -> TwoTowerConfig:
  if name not in NAMED_CONFIGS:
    raise ConfigError(f"unknown model name {name!r}; known: {', '.join(sorted(NAMED_CONFIGS))}")
  return NAMED_CONFIGS[name]
