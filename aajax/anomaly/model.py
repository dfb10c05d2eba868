"""The anomaly-aware two-tower model (AA-CLIP) on a SigLIP or CLIP backbone.

Parameter tree: `backbone/{vision,text,logit_scale,...}` (frozen, converted weights) and the
trainable groups `text_adapters_{i}`, `text_proj`, `cross_attn` (stage 1) and `image_adapters_{i}`,
`seg_proj_{k}`, `det_proj` (stage 2).

What plays CLIP's roles on SigLIP (which has no class token and no linear projection):
  * patch tokens: all tokens (there is no class token to drop; dropping one would break the grid);
  * `ln_post` on patch tokens: SigLIP's `post_layernorm`, which it already applies to all tokens;
  * `visual.proj` into the joint space (stage-1 features, cross-attention context): the MAP head's
    per-token value path (`MAPHead.token_values`), i.e. what the head outputs when its attention
    puts all weight on one token;
  * the global CLS embedding added in stage 1: the MAP head output (the SigLIP image embedding);
  * the EOT token + `text_projection` replaced by the text projector: the last token, with the
    projector replacing SigLIP's text `head`.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from aajax.anomaly.adapters import Projector, ResidualAdapter, TextImageCrossAttention
from aajax.anomaly.config import AAConfig
from aajax.encoders.two_towers import TwoTowerModel, l2_normalize
from aajax.params import flatten


class AAModel(nn.Module):
  cfg: AAConfig

  def setup(self):
    c = self.cfg
    dtype = jnp.dtype(c.backbone.vision.dtype)
    self.backbone = TwoTowerModel(c.backbone)
    self.text_adapters = [ResidualAdapter(c.text_adapt_weight, dtype) for _ in range(c.text_adapt_until)]
    self.text_proj = Projector(c.embed_dim, relu=True, dtype=dtype)  # always LeakyReLU, as released
    self.image_adapters = [ResidualAdapter(c.image_adapt_weight, dtype) for _ in range(c.image_adapt_until)]
    self.seg_proj = [Projector(c.embed_dim, c.projector_relu, dtype) for _ in c.levels]
    self.det_proj = Projector(c.embed_dim, c.projector_relu, dtype)
    if c.cross_attention:
      self.cross_attn = TextImageCrossAttention(c.cross_attn_heads, c.cross_attn_dropout, dtype)

  # -- text ----------------------------------------------------------------------------------
  def encode_text(self, ids, context=None, deterministic: bool = True):
    """Adapted text embeddings (not normalised).

    ids [N, L]. With cross-attention, `context` is [G, K, E] and the N sentences form G equal
    groups, group g attending to context g (N = G * sentences per group).
    """
    text, depth = self.backbone.text, self.cfg.backbone.text.depth
    x, rows = text.embed(ids), text.sentence_positions(ids)
    for i in range(depth):
      # the last block computes the pooled token alone: nothing after it mixes the text tokens (the
      # cross-attention and the adapters act on each token by itself)
      x = text.block(i, x, rows if i == depth - 1 else None)
      if i == 0 and self.cfg.cross_attention:
        if context is None:
          raise ValueError("this model has stage-1 cross-attention: encode_text needs an image context")
        g = context.shape[0]
        n, length, d = x.shape
        x = self.cross_attn(x.reshape(g, (n // g) * length, d), context, deterministic).reshape(n, length, d)
      if i < self.cfg.text_adapt_until:
        x = self.text_adapters[i](x)
    return self.text_proj(text.final_norm(x)[:, 0])

  def text_anchors(self, ids, num_normal: int, context=None, deterministic: bool = True):
    """Prompt-ensemble anchors. ids [C, S, L]: S sentences per class, the first `num_normal`
    describing the normal state. Returns [C, E, 2] (column 0 normal, column 1 abnormal)."""
    c, s, length = ids.shape
    emb = l2_normalize(self.encode_text(ids.reshape(c * s, length), context, deterministic).astype(jnp.float32))
    emb = emb.reshape(c, s, -1)
    normal = l2_normalize(emb[:, :num_normal].mean(axis=1))
    abnormal = l2_normalize(emb[:, num_normal:].mean(axis=1))
    return jnp.stack([normal, abnormal], axis=-1)

  # -- image, stage 2 and inference ----------------------------------------------------------
  def image_features(self, images):
    """Adapted forward: {"seg": [levels] of [B, N, E] unit vectors, "det": [B, E]}."""
    vision, c = self.backbone.vision, self.cfg
    x = vision.embed(images)
    taps = []
    for i in range(c.backbone.vision.depth):
      x = vision.block(i, x)
      if i < c.image_adapt_until:
        x = self.image_adapters[i](x)
      if i + 1 in c.levels:
        taps.append(vision.final_norm(vision.patch_tokens(x)))
    seg = [l2_normalize(proj(t).astype(jnp.float32)) for proj, t in zip(self.seg_proj, taps)]
    det = l2_normalize(self.det_proj(taps[-1]).astype(jnp.float32)).mean(axis=1)
    return {"seg": seg, "det": det}

  # -- image, stage 1 (frozen) ---------------------------------------------------------------
  def to_joint_space(self, tokens):
    """Normed vision tokens -> the text embedding space of the frozen backbone."""
    vision = self.backbone.vision
    if self.cfg.backbone.vision.pool == "map":
      return vision.head.token_values(tokens)
    return vision.proj(tokens)

  def stage1_image_inputs(self, images):
    """Frozen image features for text-adapter training (computed without gradients).

    Returns {"levels": [levels] of [B, N, E], "context": [B, N, E] or None}:
      levels:  normalize(joint(ln_post(patches))) of the DPAM ("surgery") forward at each level,
               plus the normalised global embedding of the unmodified forward; the sum is not
               re-normalised, as released;
      context: cross-attention keys/values, built the same way from the unmodified forward at
               block `cross_attn_level` (the variant's "layer-6 patches through the projection
               plus the final CLS"; we apply ln_post and normalise both terms so the two parts
               have the scale they have in the level features).
    """
    vision, c = self.backbone.vision, self.cfg
    depth = c.backbone.vision.depth
    shared = depth if c.dpam_mode == "off" else c.dpam_from - 1  # blocks both forwards have in common
    keep = set(c.levels) | {shared} | ({c.cross_attn_level} if c.cross_attention else set())
    x = vision.embed(images)
    plain = {0: x}
    for i in range(depth):
      x = vision.block(i, x)
      if i + 1 in keep:
        plain[i + 1] = x
    global_emb = l2_normalize(vision.pool(x).astype(jnp.float32))[:, None]
    surgery = dict(plain)
    y = plain[shared]
    for i in range(shared, depth):
      y = vision.block(i, y, c.dpam_mode)
      surgery[i + 1] = y

    def joint(h):
      return l2_normalize(self.to_joint_space(vision.final_norm(vision.patch_tokens(h))).astype(jnp.float32))

    # One pass of the head over all taps stacked on the batch axis: a few large products instead of
    # one set of small ones per level (the head is a sizeable part of the frozen stage-1 forward)
    taps = [surgery[lv] for lv in c.levels] + ([plain[c.cross_attn_level]] if c.cross_attention else [])
    feats = [f + global_emb for f in jnp.split(joint(jnp.concatenate(taps, axis=0)), len(taps), axis=0)]
    levels = feats[:len(c.levels)]
    context = feats[-1] if c.cross_attention else None
    return {"levels": [jax.lax.stop_gradient(f) for f in levels],
            "context": None if context is None else jax.lax.stop_gradient(context)}

  # -- scoring -------------------------------------------------------------------------------
  def patch_logits(self, feats, anchors):
    """feats [B, N, E] unit vectors, anchors [B, E, 2] -> scaled similarity [B, N, 2]."""
    return self.cfg.score_scale * jnp.einsum("bne,bek->bnk", feats, anchors)

  def init_all(self, images, ids):
    """Touch every parameter group (used only by init)."""
    ctx = None
    if self.cfg.cross_attention:
      ctx = jnp.zeros((1, 4, self.cfg.embed_dim), jnp.float32)
      ids = ids[:1]
    self.encode_text(ids, ctx)
    self.image_features(images)
    out = self.backbone(images, ids)
    if self.cfg.backbone.vision.pool == "map":
      self.to_joint_space(jnp.zeros((1, 1, self.cfg.backbone.vision.width)))
    return out


def example_inputs(cfg: AAConfig, batch: int = 1):
  s = cfg.image_size
  return jnp.zeros((batch, s, s, 3), jnp.float32), jnp.zeros((batch, cfg.backbone.text.max_len), jnp.int32)


def init_params(cfg: AAConfig, rng):
  """All parameters: a random backbone (replaced by converted weights in practice) and fresh adapters."""
  return AAModel(cfg).init(rng, *example_inputs(cfg), method=AAModel.init_all)["params"]


def init_shapes(cfg: AAConfig) -> dict:
  """{param path tuple: shape} without allocating anything."""
  tree = jax.eval_shape(lambda: init_params(cfg, jax.random.PRNGKey(0)))
  return {p: tuple(v.shape) for p, v in flatten(tree).items()}
