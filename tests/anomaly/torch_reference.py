"""A PyTorch reference of AA-CLIP's forward, losses and DPAM, written from the reference notes.

It drives the layers of a transformers SiglipModel / CLIPModel block by block, the way the released
`AdaptedCLIP.forward`, `encode_text`, `train.py` and `forward_utils.py` do, including the (L, N, D)
DPAM quirk. Tests load the same weights into aajax's AAModel and compare.
"""
import numpy as np
import torch
import torch.nn.functional as F


class SimpleAdapter(torch.nn.Module):
  """Released module structure (keys `fc.0.weight`)."""

  def __init__(self, c_in, c_out):
    super().__init__()
    self.fc = torch.nn.Sequential(torch.nn.Linear(c_in, c_out, bias=False), torch.nn.LeakyReLU())

  def forward(self, x):
    return self.fc(x)


class SimpleProj(torch.nn.Module):
  """Released module structure (keys `fc.weight`, or `fc.0.weight` with relu)."""

  def __init__(self, c_in, c_out, relu):
    super().__init__()
    lin = torch.nn.Linear(c_in, c_out, bias=False)
    self.fc = torch.nn.Sequential(lin, torch.nn.LeakyReLU()) if relu else lin

  def forward(self, x):
    return self.fc(x)


class TorchAA(torch.nn.Module):
  """The AA-CLIP trainable parts around a transformers two-tower model."""

  def __init__(self, hf, cfg):
    super().__init__()
    self.hf, self.cfg = hf, cfg
    v, t = hf.config.vision_config, hf.config.text_config
    e = cfg.embed_dim
    self.text_adapter = torch.nn.ModuleList([SimpleAdapter(t.hidden_size, t.hidden_size) for _ in range(cfg.text_adapt_until)]
                                            + [SimpleProj(t.hidden_size, e, relu=True)])
    self.image_adapter = torch.nn.ModuleDict({
        "layer_adapters": torch.nn.ModuleList([SimpleAdapter(v.hidden_size, v.hidden_size) for _ in range(cfg.image_adapt_until)]),
        "seg_proj": torch.nn.ModuleList([SimpleProj(v.hidden_size, e, cfg.projector_relu) for _ in cfg.levels]),
        "det_proj": SimpleProj(v.hidden_size, e, cfg.projector_relu)})
    self.layer_adapters = self.image_adapter["layer_adapters"]
    self.seg_proj = self.image_adapter["seg_proj"]
    self.det_proj = self.image_adapter["det_proj"]
    if cfg.cross_attention:
      self.text_cross_attn = torch.nn.ModuleDict({n: torch.nn.Linear(e if n in ("k_proj", "v_proj") else t.hidden_size, t.hidden_size)
                                        for n in ("q_proj", "k_proj", "v_proj", "out_proj")})
    for p in self.parameters():
      if p.dim() > 1 and not any(p is q for q in hf.parameters()):
        torch.nn.init.xavier_uniform_(p)

  # -- helpers ---------------------------------------------------------------------------------
  def adapt(self, layer, x, w):
    a = layer(x)
    a = a * x.norm(dim=-1, keepdim=True) / a.norm(dim=-1, keepdim=True)
    return w * a + (1 - w) * x

  @property
  def vision(self):
    return self.hf.vision_model

  @property
  def siglip(self):
    return self.cfg.backbone.family == "siglip"

  def position_table(self):
    """The position table resized to the AA input grid as open_clip's resize_pos_embed does it
    (class row kept, grid bicubic with antialias), which AA-CLIP applies before loading weights."""
    emb = self.vision.embeddings
    table = emb.position_embedding.weight
    prefix = 0 if self.siglip else 1
    old = int(round((table.shape[0] - prefix) ** 0.5))
    new = self.cfg.image_size // emb.patch_size
    if old == new:
      return table
    grid = table[prefix:].reshape(1, old, old, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(new, new), mode="bicubic", antialias=True, align_corners=False)
    return torch.cat([table[:prefix], grid.permute(0, 2, 3, 1).reshape(new * new, -1)])

  def embed_image(self, images):
    emb = self.vision.embeddings
    x = emb.patch_embedding(images).flatten(2).transpose(1, 2)
    if not self.siglip:
      x = torch.cat([emb.class_embedding.expand(x.shape[0], 1, -1), x], dim=1)
    x = x + self.position_table()[None]
    return x if self.siglip else self.vision.pre_layrnorm(x)

  def patches(self, x):
    return x if self.siglip else x[:, 1:]

  def joint(self, tokens):
    """ln_post'd tokens -> joint space: visual.proj (CLIP) or the MAP head's value path (SigLIP)."""
    if not self.siglip:
      return self.hf.visual_projection(tokens)
    head = self.vision.head
    d = tokens.shape[-1]
    w, b = head.attention.in_proj_weight[2 * d:], head.attention.in_proj_bias[2 * d:]
    u = head.attention.out_proj(F.linear(tokens, w, b))
    return u + head.mlp(head.layernorm(u))

  def global_embedding(self, x):
    if self.siglip:
      return self.vision.head(self.vision.post_layernorm(x))
    return self.hf.visual_projection(self.vision.post_layernorm(x[:, 0]))

  # -- forwards --------------------------------------------------------------------------------
  def image_features(self, images):
    x = self.embed_image(images)
    taps = []
    for i, layer in enumerate(self.vision.encoder.layers):
      x = layer(x, None)
      if i < self.cfg.image_adapt_until:
        x = self.adapt(self.layer_adapters[i], x, self.cfg.image_adapt_weight)
      if i + 1 in self.cfg.levels:
        taps.append(self.vision.post_layernorm(self.patches(x)))
    seg = [F.normalize(p(t), dim=-1) for p, t in zip(self.seg_proj, taps)]
    det = F.normalize(self.det_proj(taps[-1]), dim=-1).mean(1)
    return seg, det

  def encode_text(self, ids, context=None):
    tm = self.hf.text_model
    x = tm.embeddings(input_ids=ids)
    length = ids.shape[1]
    mask = None
    if not self.siglip:
      mask = torch.full((length, length), torch.finfo(torch.float32).min).triu(1)[None, None]
    for i, layer in enumerate(tm.encoder.layers):
      x = layer(x, mask)
      if i == 0 and self.cfg.cross_attention:
        x = x + self.cross_attention(x, context)
      if i < self.cfg.text_adapt_until:
        x = self.adapt(self.text_adapter[i], x, self.cfg.text_adapt_weight)
    x = tm.final_layer_norm(x)
    pooled = x[:, -1] if self.siglip else x[torch.arange(len(ids)), ids.argmax(-1)]
    return self.text_adapter[-1](pooled)

  def cross_attention(self, x, context):
    g = context.shape[0]
    n, length, d = x.shape
    q = x.reshape(g, -1, d)
    h = self.cfg.cross_attn_heads
    split = lambda t: t.reshape(t.shape[0], t.shape[1], h, -1).transpose(1, 2)
    qh, kh, vh = split(self.text_cross_attn["q_proj"](q)), split(self.text_cross_attn["k_proj"](context)), split(self.text_cross_attn["v_proj"](context))
    w = torch.softmax(qh @ kh.transpose(-1, -2) / (d // h) ** 0.5, dim=-1)
    out = (w @ vh).transpose(1, 2).reshape(g, -1, d)
    return self.text_cross_attn["out_proj"](out).reshape(n, length, d)

  def anchors(self, ids, num_normal, context=None):
    c, s, length = ids.shape
    emb = F.normalize(self.encode_text(ids.reshape(c * s, length), context), dim=-1).reshape(c, s, -1)
    normal = F.normalize(emb[:, :num_normal].mean(1), dim=-1)
    abnormal = F.normalize(emb[:, num_normal:].mean(1), dim=-1)
    return torch.stack([normal, abnormal], dim=-1)

  def surgery_levels(self, images, mode):
    """clip_surgery.encode_image with DAPM_replace, in the released (L, N, D) layout."""
    x = self.embed_image(images)
    plain, feats = x, []
    for i, layer in enumerate(self.vision.encoder.layers):
      plain = layer(plain, None)
    glob = F.normalize(self.global_embedding(plain), dim=-1)
    for i, layer in enumerate(self.vision.encoder.layers):
      if i + 1 >= self.cfg.dpam_from and mode != "off":
        x = x + self.vv_attention(layer, layer.layer_norm1(x), mode)
        x = x + layer.mlp(layer.layer_norm2(x))
      else:
        x = layer(x, None)
      if i + 1 in self.cfg.levels:
        feats.append(F.normalize(self.joint(self.vision.post_layernorm(self.patches(x))), dim=-1) + glob[:, None])
    return feats

  def vv_attention(self, layer, h, mode):
    attn = layer.self_attn
    v = attn.v_proj(h)  # [B, N, D]
    if mode == "vv_batch":
      v = v.transpose(0, 1)  # the released module reads (L, N, D) as (B, N, C): tokens become the batch
    b, n, d = v.shape
    heads = attn.num_heads if hasattr(attn, "num_heads") else attn.config.num_attention_heads
    vh = v.reshape(b, n, heads, d // heads).transpose(1, 2)
    w = torch.softmax(vh @ vh.transpose(-1, -2) * (d // heads) ** -0.5, dim=-1)
    out = (w @ vh).transpose(1, 2).reshape(b, n, d)
    if mode == "vv_batch":
      out = out.transpose(0, 1)
    return attn.out_proj(out)


# -- losses and maps, as forward_utils.py computes them -------------------------------------------
def similarity_map(feats, anchors, size, scale=100.0, test=False):
  s = scale * feats @ anchors  # [B, L, 2]
  b, n, c = s.shape
  g = int(np.sqrt(n))
  s = s.permute(0, 2, 1).reshape(b, c, g, g)
  if test:
    s = ((s[:, 1] + 1 - s[:, 0]) / 2)[:, None]
  up = F.interpolate(s, size=size, mode="bilinear", align_corners=True)
  return up if test else torch.softmax(up, dim=1)


def focal(probs, mask, smooth=1e-5, gamma=2):
  logit = probs.reshape(probs.shape[0], probs.shape[1], -1).permute(0, 2, 1).reshape(-1, 2)
  target = mask.reshape(-1, 1).long()
  onehot = torch.zeros(target.shape[0], 2).scatter_(1, target, 1)
  onehot = torch.clamp(onehot, smooth / 1, 1.0 - smooth)
  pt = (onehot * logit).sum(1) + smooth
  return (-1 * torch.pow(1 - pt, gamma) * pt.log()).mean()


def dice(inp, tgt):
  n = tgt.shape[0]
  i, t = inp.reshape(n, -1), tgt.reshape(n, -1)
  return 1 - ((2 * (i * t).sum(1) + 1) / (i.sum(1) + t.sum(1) + 1)).sum() / n


def seg_loss(probs, mask):
  return focal(probs, mask) + dice(probs[:, 0], 1 - mask) + dice(probs[:, 1], mask)


# -- test-time maps and scores, as test.py computes them ------------------------------------------
def gaussian_blur(x, size, sigma):
  """kornia.filters.gaussian_blur2d(x, (size, size), (sigma, sigma), border_type="reflect")."""
  t = torch.arange(size, dtype=torch.float64) - size // 2
  k = torch.exp(-t ** 2 / (2 * sigma ** 2))
  k = (k / k.sum()).float()
  k2 = (k[:, None] * k[None, :])[None, None].repeat(x.shape[1], 1, 1, 1)
  p = size // 2
  return F.conv2d(F.pad(x, (p, p, p, p), mode="reflect"), k2, groups=x.shape[1])


def test_maps(seg_feats, det, anchors, size, blur_size, blur_sigma, scale=100.0):
  """Per-image anomaly map (sum over levels) and detection score, as test.py."""
  total = 0
  for feats in seg_feats:
    s = scale * feats @ anchors
    b, n, _ = s.shape
    g = int(np.sqrt(n))
    m = ((s[..., 1] + 1 - s[..., 0]) / 2).reshape(b, 1, g, g)
    m = gaussian_blur(m, blur_size, blur_sigma)
    total = total + F.interpolate(m, size=size, mode="bilinear", align_corners=True)[:, 0]
  det_score = ((det[:, None] @ anchors[..., 1:]).reshape(-1) + 1) / 2
  return total, det_score


def class_scores(maps, det, medical):
  """metrics_eval: one global min-max per class for maps and for detection scores."""
  m = (maps - maps.min()) / (maps.max() - maps.min())
  peak = m.reshape(m.shape[0], -1).max(1).values
  if medical:
    return m, peak
  d = (det - det.min()) / (det.max() - det.min())
  return m, 0.5 * peak + 0.5 * d
