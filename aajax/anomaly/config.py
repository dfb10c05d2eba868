"""Config of the anomaly-aware (AA-CLIP style) model on a SigLIP or CLIP two-tower backbone."""
import dataclasses

from aajax.encoders.config import TwoTowerConfig
from aajax.errors import ConfigError

DPAM_MODES = ("off", "vv", "vv_batch", "value")


@dataclasses.dataclass(frozen=True)
class AAConfig:
  backbone: TwoTowerConfig
  image_size: int = 518                  # input resolution; positions are resized to its grid
  text_adapt_until: int = 3              # residual adapters after text blocks 1..K_T
  image_adapt_until: int = 6             # residual adapters after vision blocks 1..K_I
  levels: tuple[int, ...] = (6, 12, 18, 24)  # 1-based vision blocks tapped for segmentation
  text_adapt_weight: float = 0.1         # lambda of the residual blend
  image_adapt_weight: float = 0.1
  projector_relu: bool = False           # the reference's --relu (changes checkpoint keys)
  score_scale: float = 100.0             # temperature of the patch-text similarity maps
  # Stage 1 (text adapters) reads frozen "surgery" features with v-v attention in blocks
  # dpam_from..depth. "vv" is the intended per-image attention over tokens; "vv_batch" reproduces
  # the released code (softmax across the batch at each token); "value" is its batch-1 limit.
  dpam_mode: str = "vv"
  dpam_from: int = 6
  # Stage-1 cross-attention variant: text tokens after text block 1 attend to an image context
  # (tokens of vision block `cross_attn_level` in the joint space + the global image embedding).
  cross_attention: bool = False
  cross_attn_heads: int = 8
  cross_attn_dropout: float = 0.1
  cross_attn_level: int = 6

  def __post_init__(self):
    depth = self.backbone.vision.depth
    if self.dpam_mode not in DPAM_MODES:
      raise ConfigError(f"dpam_mode {self.dpam_mode!r} unknown; expected one of {DPAM_MODES}")
    bad = [lv for lv in self.levels if not 1 <= lv <= depth]
    if bad or not self.levels:
      raise ConfigError(f"levels {self.levels} must be 1-based vision blocks in 1..{depth}")
    if not 0 <= self.image_adapt_until <= depth or not 0 <= self.text_adapt_until <= self.backbone.text.depth:
      raise ConfigError("image_adapt_until / text_adapt_until exceed the tower depths")
    if self.image_size % self.backbone.vision.patch:
      raise ConfigError(f"image_size {self.image_size} is not a multiple of the patch size {self.backbone.vision.patch}")
    if self.cross_attention and not 1 <= self.cross_attn_level <= depth:
      raise ConfigError(f"cross_attn_level {self.cross_attn_level} outside 1..{depth}")

  @property
  def embed_dim(self) -> int:
    """Width of the joint space the anchors and patch features live in."""
    return self.backbone.text.out_dim

  @property
  def grid(self) -> int:
    return self.image_size // self.backbone.vision.patch

  def replace(self, **kw) -> "AAConfig":
    backbone_kw = {k: kw.pop(k) for k in ("dtype", "remat", "remat_policy") if k in kw}
    backbone = kw.pop("backbone", self.backbone)
    if backbone_kw:
      backbone = backbone.replace(**backbone_kw)
    return dataclasses.replace(self, backbone=backbone, **kw)

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict) -> "AAConfig":
    d = dict(d)
    try:
      backbone = TwoTowerConfig.from_dict(d.pop("backbone"))
      if "levels" in d:
        d["levels"] = tuple(d["levels"])
      return cls(backbone=backbone, **d)
    except TypeError as e:
      raise ConfigError(f"invalid AA config: {e}") from None


def recipe_for_depth(depth: int) -> dict:
  """AA-CLIP's layout scaled to a tower's depth: adapters on the first quarter of the blocks,
  four levels at the ends of the four quarters (rounded up, so they stay distinct), DPAM from the
  end of the adapted blocks. 24 blocks -> levels 6/12/18/24 (the paper); 27 (So400m) -> 7/14/21/27;
  12 (B/16) -> 3/6/9/12; 6 -> 2/3/5/6."""
  if depth < 4:
    raise ConfigError(f"AA-CLIP taps four levels; a {depth}-block tower is too shallow")
  levels = tuple(-(-depth * k // 4) for k in (1, 2, 3, 4))
  until = max(1, depth // 4)
  return {"levels": levels, "image_adapt_until": until, "dpam_from": until, "cross_attn_level": levels[0]}
