"""The AA-Moondream anomaly branch: Moondream's vision tower with AA-CLIP adapters and a learned head.

Parameter tree: `vision` (Moondream's vision tower, frozen: the converted checkpoint's
`vision` sub-tree as is) and the trainable `image_adapters_{i}`, `seg_proj_{k}`, `det_proj`,
`anchors` [E, 2] (column 0 normal, column 1 abnormal), `level_weights` [levels] and `map_weight` [].

Forward of one crop batch [B, S, S, 3] (normalised to [-1, 1], as Moondream's crops):
  x = patch_emb(patchify(x)) + pos_emb; for each block i: x = block_i(x), then the residual
  adapter i (i < K); at each level l, tap post_ln(x) -> seg_proj_l -> unit vectors;
  patch logits_l = score_scale * <tap_l, normalize(anchors)>          [B, N, 2]
  fused logits = sum_l softmax(level_weights)_l * logits_l
  det = mean over tokens of normalize(det_proj(tap_last)) (AA-CLIP's detection feature)
  peak = mean of the top `topk_fraction` of the patches' (fused_abnormal - fused_normal) / score_scale
  image logits = det_scale * (<det, normalize(anchors)> + [0, map_weight * peak])   [B, 2]
The peak term lets local evidence reach the image score: a mean over all tokens (AA-CLIP's detection
feature alone) hardly moves for a defect covering a few patches unless the tower mixes tokens as a
pretrained CLIP does; `map_weight` (learned, starts at 1) sets how much the map counts.
Probabilities: pixel map = softmax(fused logits)[..., 1] on the patch grid, image score =
softmax(image logits)[..., 1]; both in [0, 1].

The language side of Moondream never sees the adapted features: the decoder reads the frozen
tower's tokens, as in base Moondream (see `aajax.aa_moondream.qa_model`).
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from aajax.aa_moondream.config import AAMoondreamConfig
from aajax.anomaly.adapters import Projector, ResidualAdapter
from aajax.encoders.two_towers import l2_normalize
from aajax.eval import maps as maps_lib
from aajax.vlm.vision import VisionEncoder, patchify


class AAMoondream(nn.Module):
  cfg: AAMoondreamConfig

  def setup(self):
    c = self.cfg
    dtype = jnp.dtype(c.moondream.vision.dtype)
    self.vision = VisionEncoder(c.moondream.vision)
    self.image_adapters = [ResidualAdapter(c.image_adapt_weight, dtype) for _ in range(c.image_adapt_until)]
    self.seg_proj = [Projector(c.embed_dim, c.projector_relu, dtype) for _ in c.levels]
    self.det_proj = Projector(c.embed_dim, c.projector_relu, dtype)
    self.anchors = self.param("anchors", nn.initializers.normal(1.0), (c.embed_dim, 2))
    self.level_weights = self.param("level_weights", nn.initializers.zeros, (len(c.levels),))
    self.map_weight = self.param("map_weight", nn.initializers.ones, ())

  def embed(self, crops):
    v = self.cfg.moondream.vision
    x = self.vision.patch_emb(patchify(crops.astype(jnp.dtype(v.dtype)), v.enc_patch_size))
    return x + self.vision.pos_emb.astype(x.dtype)

  def block_outputs(self, crops, adapted: bool = True):
    """Residual stream after every block [depth] of [B, N, D] (adapters applied when `adapted`)."""
    x = self.embed(crops)
    out = []
    for i, block in enumerate(self.vision.blocks):
      x = block(x)
      if adapted and i < self.cfg.image_adapt_until:
        x = self.image_adapters[i](x)
      out.append(x)
    return out

  def features(self, crops):
    """{"seg": [levels] of [B, N, E] unit vectors, "det": [B, E]} of the adapted tower."""
    c = self.cfg
    blocks = self.block_outputs(crops)
    taps = [self.vision.post_ln(blocks[lv - 1]) for lv in c.levels]
    seg = [l2_normalize(proj(t).astype(jnp.float32)) for proj, t in zip(self.seg_proj, taps)]
    det = l2_normalize(self.det_proj(taps[-1]).astype(jnp.float32)).mean(axis=1)
    return {"seg": seg, "det": det}

  def unit_anchors(self):
    """[E, 2] anchors with unit columns."""
    return l2_normalize(self.anchors.astype(jnp.float32).T).T

  def __call__(self, crops):
    """{"level_logits": [levels] of [B, N, 2], "fused_logits": [B, N, 2], "image_logits": [B, 2],
    "det": [B, E], "anchors": [E, 2]}."""
    c = self.cfg
    feats = self.features(crops)
    anchors = self.unit_anchors()
    levels = [c.score_scale * jnp.einsum("bne,ek->bnk", f, anchors) for f in feats["seg"]]
    w = jax.nn.softmax(self.level_weights.astype(jnp.float32))
    fused = sum(w[i] * lg for i, lg in enumerate(levels))
    diff = (fused[..., 1] - fused[..., 0]) / c.score_scale
    k = max(1, round(c.topk_fraction * diff.shape[-1]))
    peak = jax.lax.top_k(diff, k)[0].mean(axis=-1)
    image = c.det_scale * (feats["det"] @ anchors + jnp.stack([jnp.zeros_like(peak), self.map_weight * peak], -1))
    return {"level_logits": levels, "fused_logits": fused, "image_logits": image, "det": feats["det"],
            "anchors": anchors}

  def probabilities(self, crops):
    """(pixel anomaly probability on the patch grid [B, g, g], image score [B]), both in [0, 1]."""
    out = self(crops)
    g = self.cfg.grid
    pix = jax.nn.softmax(out["fused_logits"], axis=-1)[..., 1].reshape(-1, g, g)
    return pix, jax.nn.softmax(out["image_logits"], axis=-1)[:, 1]

  def score_maps(self, crops):
    """Linear scores for ranking metrics: (map (cos_abnormal + 1 - cos_normal) / 2 of the fused
    logits [B, g, g], image logit difference / det_scale [B]).

    The probabilities saturate to exactly 0 or 1 in float32 (logits scaled by 100 and 10), which
    makes ties; these are their unsaturated monotone equivalents, as AA-CLIP's test maps are."""
    out = self(crops)
    g = self.cfg.grid
    grid = maps_lib.score_map(out["fused_logits"] / self.cfg.score_scale).reshape(-1, g, g)
    return grid, (out["image_logits"][:, 1] - out["image_logits"][:, 0]) / self.cfg.det_scale

  def layer_embeddings(self, crops, adapted: bool = True):
    """Mean token of every block's output [depth, B, D]: the per-layer image embeddings whose
    normal/abnormal separation the diagnostic measures."""
    return jnp.stack([x.astype(jnp.float32).mean(axis=1) for x in self.block_outputs(crops, adapted)])


HEAD_GROUPS = ("image_adapters_", "seg_proj_", "det_proj", "anchors", "level_weights", "map_weight")


def split_params(params: dict) -> tuple[dict, dict]:
  """(frozen {"vision"}, trainable head groups) of the full anomaly-branch tree."""
  trainable = {k: v for k, v in params.items() if k.startswith(HEAD_GROUPS)}
  return {k: v for k, v in params.items() if k not in trainable}, trainable


def init_params(cfg: AAMoondreamConfig, rng) -> dict:
  """All anomaly-branch params; `vision` random (replaced by Moondream's in practice)."""
  s = cfg.image_size
  return AAMoondream(cfg).init(rng, jnp.zeros((1, s, s, 3), jnp.float32))["params"]
