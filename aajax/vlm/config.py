"""Frozen configs of the Moondream family and its named sizes.

One model definition, many sizes: Moondream 2, Moondream 0.5B, Moondream 3 and the tiny test sizes
differ only in the fields below. The per-checkpoint behaviour switches (tokenizer generation, size
decoding scale, MoE, tau attention scaling, region head shape) are config fields, so a converted
model directory carries them in its `config.json`.
"""
import dataclasses
import json
from typing import Optional

from aajax.errors import ConfigError

DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class MoeConfig:
  num_experts: int = 64
  experts_per_token: int = 8
  expert_inner_dim: int = 1024
  start_layer: int = 4           # layers before this one keep the dense MLP
  # "sorted": assignments sorted by expert and run block by block (only routed work is done);
  # "ragged": the same through jax.lax.ragged_dot; "dense": every expert on every token (reference).
  dispatch: str = "sorted"


@dataclasses.dataclass(frozen=True)
class TextConfig:
  dim: int = 2048
  ff_dim: int = 8192
  n_layers: int = 24
  vocab_size: int = 51200
  max_context: int = 2048
  n_heads: int = 32
  n_kv_heads: int = 32
  rotary_dim: int = 32           # RoPE rotates the first `rotary_dim` dims of each head
  rope_theta: float = 10000.0
  ln_eps: float = 1e-5
  tau: bool = False              # Moondream 3 per-token/per-position Q and V scaling
  moe: Optional[MoeConfig] = None
  dtype: str = "float32"         # compute dtype; params keep their stored dtype
  # Decoder family switches (see aajax/decoder/families.py for the Llama / Qwen2 / GPT-2 presets);
  # the defaults are Moondream's Phi-style block.
  block: str = "parallel"        # "parallel": x + attn(ln x) + mlp(ln x); "sequential": two norms, two residuals
  norm: str = "layernorm"        # "layernorm" (scale + bias) or "rmsnorm" (scale only)
  mlp: str = "gelu_tanh"         # "gelu_tanh": fc1 -> gelu(tanh) -> fc2; "swiglu": fc1 = [gate | up], silu(gate) * up -> fc2
  position: str = "rope"         # "rope" (rotary on the first rotary_dim dims) or "learned" (a `wpe` table added to the inputs)
  qkv_bias: bool = True
  proj_bias: bool = True
  mlp_bias: bool = True
  lm_head_bias: bool = True
  tie_embeddings: bool = False   # logits = post_ln(h) @ wte.T (no lm_head parameter)
  # > 0: rank of a Moondream LoRA variant's proj pair, which the reference adds to the attention
  # output from the attention *input* (attn/variant_proj_{a,b}; aajax.vlm.lora_variant)
  block_input_lora: int = 0

  @property
  def head_dim(self) -> int:
    return self.dim // self.n_heads

  @property
  def qkv_dim(self) -> int:
    return (self.n_heads + 2 * self.n_kv_heads) * self.head_dim

  def is_moe_layer(self, i: int) -> bool:
    return self.moe is not None and i >= self.moe.start_layer


@dataclasses.dataclass(frozen=True)
class VisionConfig:
  enc_dim: int = 1152
  enc_patch_size: int = 14
  enc_n_layers: int = 27
  enc_ff_dim: int = 4304
  enc_n_heads: int = 16
  proj_out_dim: int = 2048
  crop_size: int = 378
  in_channels: int = 3
  max_crops: int = 12
  overlap_margin: int = 4        # in patches, per side
  proj_inner_dim: int = 8192
  ln_eps: float = 1e-5
  dtype: str = "float32"

  @property
  def grid(self) -> int:
    """Patches per side of one crop (27 for 378 px / 14 px)."""
    return self.crop_size // self.enc_patch_size

  @property
  def n_tokens(self) -> int:
    return self.grid ** 2


@dataclasses.dataclass(frozen=True)
class RegionConfig:
  dim: int = 2048
  coord_feat_dim: int = 256
  coord_out_dim: int = 1024
  size_feat_dim: int = 512
  size_out_dim: int = 2048
  inner_dim: Optional[int] = 8192  # MLP decoders (md2/md05); None: LayerNorm + one Linear (md3)
  size_scale: str = "log"          # "log" (2025-03-27 onward, md3) or "linear" (md05, md2 2025-01-09)
  ln_eps: float = 1e-5
  dtype: str = "float32"


def _starmie_templates():
  return {
      "caption": {"short": [1, 32708, 2, 12492, 3], "normal": [1, 32708, 2, 6382, 3],
                  "long": [1, 32708, 2, 4059, 3]},
      "query": {"prefix": [1, 15381, 2], "suffix": [3]},
      "detect": {"prefix": [1, 7235, 476, 2], "suffix": [3]},
      "point": {"prefix": [1, 2581, 2], "suffix": [3]},
  }


def _gpt2_templates(long_caption: bool = True):
  caption = {"short": [198, 198, 16438, 8305, 25], "normal": [198, 198, 24334, 1159, 25]}
  if long_caption:
    caption["long"] = [198, 198, 14617, 8305, 25]
  return {
      "caption": caption,
      "query": {"prefix": [198, 198, 24361, 25], "suffix": [198, 198, 33706, 25]},
      "detect": {"prefix": [198, 198, 47504, 25], "suffix": [628]},
      "point": {"prefix": [198, 198, 12727, 25], "suffix": [628]},
  }


@dataclasses.dataclass(frozen=True)
class TokenizerConfig:
  """Special ids and prompt templates; they come from the config, never from the tokenizer file."""
  generation: str = "starmie"    # "starmie" (2025-06 onward, md3) or "gpt2" (older md2, md05)
  bos_id: int = 0
  eos_id: int = 0
  answer_id: Optional[int] = 3
  thinking_id: Optional[int] = 4
  coord_id: Optional[int] = 5
  size_id: Optional[int] = 6
  start_ground_points_id: Optional[int] = 7
  end_ground_id: Optional[int] = 9
  detect_leading_space: bool = True   # " obj" since 2025-03-27; "obj" before
  # The reference HEAD appends the answer suffix twice to plain queries; off = the production layout.
  query_double_suffix: bool = False
  templates: dict = dataclasses.field(default_factory=_starmie_templates, hash=False)


def starmie_tokenizer() -> TokenizerConfig:
  return TokenizerConfig()


def gpt2_tokenizer(detect_leading_space: bool = True, long_caption: bool = True) -> TokenizerConfig:
  return TokenizerConfig(generation="gpt2", bos_id=50256, eos_id=50256, answer_id=None, thinking_id=None,
                         coord_id=None, size_id=None, start_ground_points_id=None, end_ground_id=None,
                         detect_leading_space=detect_leading_space, templates=_gpt2_templates(long_caption))


_SECTIONS = {"text": TextConfig, "vision": VisionConfig, "region": RegionConfig, "tokenizer": TokenizerConfig}


@dataclasses.dataclass(frozen=True)
class MoondreamConfig:
  text: TextConfig = TextConfig()
  vision: VisionConfig = VisionConfig()
  region: RegionConfig = RegionConfig()
  tokenizer: TokenizerConfig = TokenizerConfig()

  @property
  def prefix_len(self) -> int:
    """BOS + image tokens: the bidirectionally attended prefix (730 for 378 px / 14 px crops)."""
    return 1 + self.vision.n_tokens

  def replace(self, **kw) -> "MoondreamConfig":
    """Replace top-level sections, or `dtype` of every tower at once."""
    if "dtype" in kw:
      dtype = kw.pop("dtype")
      if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; expected one of {DTYPES}")
      for name in ("text", "vision", "region"):
        kw[name] = dataclasses.replace(kw.get(name, getattr(self, name)), dtype=dtype)
    return dataclasses.replace(self, **kw)

  def validate(self) -> "MoondreamConfig":
    t, v, r = self.text, self.vision, self.region
    problems = []
    if t.dim % t.n_heads or t.n_heads % t.n_kv_heads:
      problems.append(f"text dim {t.dim} / heads {t.n_heads} / kv heads {t.n_kv_heads} do not divide")
    if t.rotary_dim > t.head_dim or t.rotary_dim % 2:
      problems.append(f"rotary_dim {t.rotary_dim} must be even and <= head_dim {t.head_dim}")
    if t.tau and t.n_kv_heads != t.n_heads:
      problems.append("tau scaling needs n_kv_heads == n_heads")
    if v.crop_size % v.enc_patch_size or v.grid <= 2 * v.overlap_margin:
      problems.append(f"crop {v.crop_size} / patch {v.enc_patch_size} / margin {v.overlap_margin} inconsistent")
    if v.proj_out_dim != t.dim or r.dim != t.dim:
      problems.append(f"projection ({v.proj_out_dim}) and region ({r.dim}) widths must equal text dim {t.dim}")
    if r.size_scale not in ("log", "linear"):
      problems.append(f"region size_scale {r.size_scale!r} is not 'log' or 'linear'")
    if t.moe is not None and t.moe.dispatch not in ("sorted", "ragged", "dense"):
      problems.append(f"moe dispatch {t.moe.dispatch!r} is not 'sorted', 'ragged' or 'dense'")
    if self.prefix_len >= t.max_context:
      problems.append(f"image prefix {self.prefix_len} does not fit max_context {t.max_context}")
    if problems:
      raise ConfigError("invalid Moondream config: " + "; ".join(problems))
    return self

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict) -> "MoondreamConfig":
    try:
      unknown = set(d) - set(_SECTIONS)
      if unknown:
        raise TypeError(f"unknown sections {sorted(unknown)}")
      sections = {k: dict(d.get(k, {})) for k in _SECTIONS}
      if sections["text"].get("moe") is not None:
        sections["text"]["moe"] = MoeConfig(**sections["text"]["moe"])
      return cls(**{k: _SECTIONS[k](**v) for k, v in sections.items()}).validate()
    except TypeError as e:  # an unknown or missing key
      raise ConfigError(f"invalid Moondream config: {e}") from None

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=2)


# -- named configs --------------------------------------------------------------------------------
def moondream2() -> MoondreamConfig:
  """Moondream 2 (2B), 2025-06 release: starmie tokenizer, log-scale sizes."""
  return MoondreamConfig()


def moondream2_2025_01_09() -> MoondreamConfig:
  """Moondream 2 of 2025-01-09: GPT-2 tokenizer, linear sizes, no long caption, detect without space."""
  return MoondreamConfig(region=RegionConfig(size_scale="linear"),
                         tokenizer=gpt2_tokenizer(detect_leading_space=False, long_caption=False))


def moondream2_2025_04_14() -> MoondreamConfig:
  """Moondream 2 of 2025-03-27 / 04-14: GPT-2 tokenizer, log sizes, long captions."""
  return MoondreamConfig(tokenizer=gpt2_tokenizer())


def moondream05() -> MoondreamConfig:
  """Moondream 0.5B: narrower towers, 16 KV heads, GPT-2 tokenizer, linear sizes."""
  return MoondreamConfig(
      text=TextConfig(dim=1024, ff_dim=4096, n_heads=16, n_kv_heads=16),
      vision=VisionConfig(enc_dim=720, enc_ff_dim=2690, enc_n_heads=10, proj_out_dim=1024),
      region=RegionConfig(dim=1024, size_scale="linear"),
      tokenizer=gpt2_tokenizer(detect_leading_space=False, long_caption=False))


def moondream3(n_layers: int = 24) -> MoondreamConfig:
  """Moondream 3 preview: tau scaling, 64-expert top-8 MoE from layer 4, theta 1.5e6, 4096 context.

  n_layers < 24 gives the reduced-depth variant used where memory is short (same widths).
  """
  start = min(4, n_layers)
  return MoondreamConfig(
      text=TextConfig(max_context=4096, rope_theta=1.5e6, tau=True, n_layers=n_layers,
                      moe=MoeConfig(start_layer=start)),
      region=RegionConfig(inner_dim=None))


def tiny(moe: bool = False, tau: bool = False, n_kv_heads: int = 4, region_mlp: bool = True,
         size_scale: str = "log", max_context: int = 256) -> MoondreamConfig:
  """A few-layer model with real structure at toy widths (tests and examples)."""
  return MoondreamConfig(
      text=TextConfig(dim=64, ff_dim=128, n_layers=3, vocab_size=512, max_context=max_context, n_heads=4,
                      n_kv_heads=n_kv_heads, rotary_dim=8, tau=tau,
                      moe=MoeConfig(num_experts=8, experts_per_token=2, expert_inner_dim=32, start_layer=1)
                      if moe else None),
      vision=VisionConfig(enc_dim=48, enc_patch_size=4, enc_n_layers=2, enc_ff_dim=96, enc_n_heads=4,
                          proj_out_dim=64, crop_size=28, max_crops=12, overlap_margin=1, proj_inner_dim=96),
      region=RegionConfig(dim=64, coord_feat_dim=16, coord_out_dim=64, size_feat_dim=32, size_out_dim=128,
                          inner_dim=96 if region_mlp else None, size_scale=size_scale),
      tokenizer=TokenizerConfig(templates=_tiny_templates()))


def _tiny_templates():
  """The starmie layout with word ids inside a toy vocabulary."""
  return {
      "caption": {"short": [1, 20, 2, 21, 3], "normal": [1, 20, 2, 22, 3], "long": [1, 20, 2, 23, 3]},
      "query": {"prefix": [1, 24, 2], "suffix": [3]},
      "detect": {"prefix": [1, 25, 26, 2], "suffix": [3]},
      "point": {"prefix": [1, 27, 2], "suffix": [3]},
  }


NAMED_CONFIGS = {
    "moondream2": moondream2,
    "moondream2-2025-04-14": moondream2_2025_04_14,
    "moondream2-2025-01-09": moondream2_2025_01_09,
    "moondream05": moondream05,
    "moondream3": moondream3,
    "tiny": tiny,
    "tiny-moe": lambda: tiny(moe=True, tau=True, n_kv_heads=4, region_mlp=False),
}


def get_config(name: str) -> MoondreamConfig:
  if name not in NAMED_CONFIGS:
    raise ConfigError(f"unknown Moondream config {name!r}; known: {', '.join(sorted(NAMED_CONFIGS))}")
  return NAMED_CONFIGS[name]().validate()
