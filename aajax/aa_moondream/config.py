"""Config of AA-Moondream: anomaly adapters and head on Moondream's frozen vision tower, and LoRA.

The vision side is AA-CLIP's image path moved onto Moondream's SigLIP tower: residual adapters
after the first `image_adapt_until` blocks, taps at the 1-based blocks `levels` (7/14/21/27 on the
27-block tower), projections into a joint space of width `embed_dim`. Moondream's decoder is not
contrastively aligned with its vision tower, so there are no text anchors: the normal/abnormal
anchors are learned parameters (one class-agnostic pair), and the head fuses the per-level maps with
learned weights. Inputs are single crops at the tower's `crop_size` (27 x 27 patches at 378 px).
"""
import dataclasses

from aajax.errors import ConfigError
from aajax.vlm.config import MoondreamConfig

# Moondream's LoRA variants adapt qkv, proj, fc1 and fc2 of every decoder block, but their proj pair
# reads the block input, not the attention output (`aajax.vlm.lora_variant`). AA-Moondream adapts the
# three where an ordinary LoRA and a variant agree, so its LoRA exports as a variant exactly.
DECODER_LORA_TARGETS = (r"blocks_\d+/attn/qkv$", r"blocks_\d+/mlp/fc1$", r"blocks_\d+/mlp/fc2$")


@dataclasses.dataclass(frozen=True)
class AAMoondreamConfig:
  moondream: MoondreamConfig
  image_adapt_until: int = 6              # residual adapters after vision blocks 1..K
  levels: tuple[int, ...] = (7, 14, 21, 27)  # 1-based vision blocks tapped for the maps
  image_adapt_weight: float = 0.1         # lambda of the residual blend (AA-CLIP's value)
  embed_dim: int = 768                    # width of the anomaly head's joint space
  projector_relu: bool = False
  score_scale: float = 100.0              # temperature of the patch-anchor similarity maps (AA-CLIP)
  det_scale: float = 10.0                 # temperature of the image-level anchor logits
  topk_fraction: float = 0.02             # share of patches whose mean map evidence joins the image score
  lora_rank: int = 8
  lora_alpha: float = 8.0
  lora_targets: tuple[str, ...] = DECODER_LORA_TARGETS

  def __post_init__(self):
    depth = self.moondream.vision.enc_n_layers
    bad = [lv for lv in self.levels if not 1 <= lv <= depth]
    if bad or not self.levels:
      raise ConfigError(f"levels {self.levels} must be 1-based vision blocks in 1..{depth}")
    if not 0 <= self.image_adapt_until <= depth:
      raise ConfigError(f"image_adapt_until {self.image_adapt_until} outside 0..{depth}")
    if self.lora_rank < 1:
      raise ConfigError(f"lora_rank must be >= 1, got {self.lora_rank}")

  @property
  def image_size(self) -> int:
    return self.moondream.vision.crop_size

  @property
  def grid(self) -> int:
    return self.moondream.vision.grid

  @property
  def lora(self):
    """The decoder's LoRA (`aajax.nn.lora`): rank, alpha and the adapted layers."""
    from aajax.nn.lora import LoraConfig
    return LoraConfig(rank=self.lora_rank, alpha=self.lora_alpha, targets=self.lora_targets)

  def replace(self, **kw) -> "AAMoondreamConfig":
    return dataclasses.replace(self, **kw)

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict) -> "AAMoondreamConfig":
    d = dict(d)
    try:
      md = MoondreamConfig.from_dict(d.pop("moondream"))
      for key in ("levels", "lora_targets"):
        if key in d:
          d[key] = tuple(d[key])
      return cls(moondream=md, **d)
    except (TypeError, KeyError) as e:
      raise ConfigError(f"invalid AA-Moondream config: {e}") from None


def recipe_for_depth(depth: int) -> dict:
  """AA-CLIP's layout scaled to the tower (27 blocks -> adapters on 1-6, levels 7/14/21/27)."""
  from aajax.anomaly.config import recipe_for_depth as aa_recipe
  r = aa_recipe(depth)
  return {"levels": r["levels"], "image_adapt_until": r["image_adapt_until"]}
