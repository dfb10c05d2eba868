"""A small PyTorch Moondream written from the reference's documented behaviour, for parity tests.

It works on a flat state dict in the checkpoint's release names (`vision.*`, `text.*`, `region.*`,
torch `[out, in]` layout) and reproduces the reference's choices where they differ from ours in
layout only: RoPE output written interleaved, a boolean prefix-LM mask, MoE as a loop over experts,
crop reconstruction by tile loops and `F.adaptive_avg_pool2d`. Everything runs in float32.
"""
import math

import numpy as np
import torch
import torch.nn.functional as F


def T(state, name):
  return torch.as_tensor(np.asarray(state[name]), dtype=torch.float32)


def linear(state, name, x, bias=True):
  return F.linear(x, T(state, f"{name}.weight"), T(state, f"{name}.bias") if bias else None)


def layer_norm(state, name, x, eps=1e-5):
  w = T(state, f"{name}.weight")
  return F.layer_norm(x, w.shape, w, T(state, f"{name}.bias"), eps)


def mlp(state, name, x):
  return linear(state, f"{name}.fc2", F.gelu(linear(state, f"{name}.fc1", x), approximate="tanh"))


# -- text ---------------------------------------------------------------------------------------
def rope_table(rot_dim, max_pos, theta):
  freqs = 1.0 / (theta ** (torch.arange(0, rot_dim, 2, dtype=torch.float32)[: rot_dim // 2] / rot_dim))
  t = torch.arange(max_pos, dtype=torch.float32)[:, None] * freqs[None]
  return torch.cos(t), torch.sin(t)


def rope_interleaved(x, pos, rot_dim, theta):
  """x [B, H, T, hd]: halves as (real, imag), output written interleaved (the reference quirk)."""
  cos, sin = rope_table(rot_dim, int(pos.max()) + 1, theta)
  cos, sin = cos[pos][None, None], sin[pos][None, None]
  xr, xp = x[..., :rot_dim], x[..., rot_dim:]
  a, b = xr[..., : rot_dim // 2], xr[..., rot_dim // 2:]
  out = torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(-2)
  return torch.cat([out, xp], dim=-1)


def prefix_mask(q_len, prefix):
  m = torch.tril(torch.ones(q_len, q_len, dtype=torch.bool))
  m[:prefix, :prefix] = True
  return m


def text_attention(state, n, x, pos, mask, tc):
  bsz, q_len, d = x.shape
  hd = d // tc.n_heads
  qkv = linear(state, f"{n}.qkv", x)
  q, k, v = qkv.split([tc.n_heads * hd, tc.n_kv_heads * hd, tc.n_kv_heads * hd], dim=-1)
  q = q.view(bsz, q_len, tc.n_heads, hd).transpose(1, 2)
  k = k.view(bsz, q_len, tc.n_kv_heads, hd).transpose(1, 2)
  v = v.view(bsz, q_len, tc.n_kv_heads, hd).transpose(1, 2)
  if tc.tau:
    feat = F.gelu(qkv)
    tok_q = torch.tanh(feat @ T(state, f"{n}.tau.wq").t()).permute(0, 2, 1)
    tok_v = torch.tanh(feat @ T(state, f"{n}.tau.wv").t()).permute(0, 2, 1)
    tau_pos = 1 + (torch.sigmoid(T(state, f"{n}.tau.alpha")[:, None] * (pos.float() + 1).log()) - 0.5)
    q = q * (tok_q + tau_pos[None]).unsqueeze(-1)
    v = v * (tok_v + tau_pos[None]).unsqueeze(-1)
  q = rope_interleaved(q, pos, tc.rotary_dim, tc.rope_theta)
  k = rope_interleaved(k, pos, tc.rotary_dim, tc.rope_theta)
  out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=tc.n_heads != tc.n_kv_heads)
  return linear(state, f"{n}.proj", out.transpose(1, 2).reshape(bsz, q_len, d))


def moe_loop(state, n, x, moe):
  """Router top-k logits -> softmax among them; loop over experts (reference prefill path)."""
  bsz, q_len, d = x.shape
  flat = x.reshape(-1, d)
  logits = linear(state, f"{n}.router", flat)
  top_logits, top_ids = torch.topk(logits, moe.experts_per_token, dim=-1)
  weights = F.softmax(top_logits, dim=-1, dtype=torch.float32)
  w1, w2 = T(state, f"{n}.fc1.weight"), T(state, f"{n}.fc2.weight")
  out = torch.zeros_like(flat)
  for e in range(w1.shape[0]):
    tok, which = (top_ids == e).nonzero(as_tuple=True)
    if tok.numel() == 0:
      continue
    h = flat[tok] @ w1[e].t()
    a, g = h.chunk(2, dim=-1)
    out[tok] += (F.gelu(a) * (g + 1)) @ w2[e].t() * weights[tok, which][:, None]
  return out.view(bsz, q_len, d)


def text_hidden(state, tc, x, prefix=0, pos=None):
  """Full forward over embeddings x [B, T, d] -> raw hidden (before post_ln) [B, T, d]."""
  q_len = x.shape[1]
  pos = torch.arange(q_len) if pos is None else pos
  mask = prefix_mask(q_len, prefix)
  for i in range(tc.n_layers):
    n = f"text.blocks.{i}"
    h = layer_norm(state, f"{n}.ln", x)
    attn = text_attention(state, f"{n}.attn", h, pos, mask, tc)
    ff = moe_loop(state, f"{n}.mlp", h, tc.moe) if tc.is_moe_layer(i) else mlp(state, f"{n}.mlp", h)
    x = x + attn + ff
  return x


def text_logits(state, hidden):
  return linear(state, "text.lm_head", layer_norm(state, "text.post_ln", hidden))


def embed(state, tokens):
  return F.embedding(torch.as_tensor(tokens), T(state, "text.wte"))


# -- vision -------------------------------------------------------------------------------------
def create_patches(x, p):
  b, c, h, w = x.shape
  x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
  return x.reshape(b, (h // p) * (w // p), c * p * p)


def vision_encoder(state, vc, crops_nchw):
  x = linear(state, "vision.patch_emb", create_patches(crops_nchw, vc.enc_patch_size)) + T(state, "vision.pos_emb")
  for i in range(vc.enc_n_layers):
    n = f"vision.blocks.{i}"
    h = layer_norm(state, f"{n}.ln1", x)
    bsz, q_len, d = h.shape
    q, k, v = [t.view(bsz, q_len, vc.enc_n_heads, d // vc.enc_n_heads).transpose(1, 2)
               for t in linear(state, f"{n}.attn.qkv", h).chunk(3, dim=-1)]
    a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(bsz, q_len, d)
    x = x + linear(state, f"{n}.attn.proj", a)
    x = x + mlp(state, f"{n}.mlp", layer_norm(state, f"{n}.ln2", x))
  return layer_norm(state, "vision.post_ln", x)


def reconstruct_from_crops(crops, tiling, margin):
  """crops [n, g, g, C] tiles in row-major order -> stitched [H, W, C] (tile loops, as the reference)."""
  th, tw = tiling
  ch, cw = crops.shape[1:3]
  out = torch.zeros(((ch - 2 * margin) * th + 2 * margin, (cw - 2 * margin) * tw + 2 * margin, crops.shape[3]))
  for i, crop in enumerate(crops):
    ty, tx = i // tw, i % tw
    x0 = 0 if tx == 0 else margin
    x1 = cw if tx == tw - 1 else cw - margin
    y0 = 0 if ty == 0 else margin
    y1 = ch if ty == th - 1 else ch - margin
    oy, ox = ty * (ch - 2 * margin), tx * (cw - 2 * margin)
    out[oy + y0:oy + y1, ox + x0:ox + x1] = crop[y0:y1, x0:x1]
  return out


def vision_projection(state, vc, global_tokens, reconstructed):
  g = vc.grid
  pooled = F.adaptive_avg_pool2d(reconstructed.permute(2, 0, 1), (g, g)).permute(1, 2, 0).reshape(g * g, -1)
  return mlp(state, "vision.proj_mlp", torch.cat([global_tokens, pooled], dim=-1))


def image_tokens(state, vc, crops_nchw, tiling):
  out = vision_encoder(state, vc, crops_nchw)
  local = out[1:].view(-1, vc.grid, vc.grid, vc.enc_dim)
  return vision_projection(state, vc, out[0], reconstruct_from_crops(local, tiling, vc.overlap_margin))


def select_tiling(h, w, cs, max_crops):
  if h <= cs or w <= cs:
    return (1, 1)
  min_h, min_w = math.ceil(h / cs), math.ceil(w / cs)
  if min_h * min_w > max_crops:
    r = math.sqrt(max_crops / (min_h * min_w))
    return (max(1, math.floor(min_h * r)), max(1, math.floor(min_w * r)))
  ht, wt = math.floor(math.sqrt(max_crops * h / w)), math.floor(math.sqrt(max_crops * w / h))
  ht, wt = max(ht, min_h), max(wt, min_w)
  if ht * wt > max_crops:
    if wt > ht:
      wt = math.floor(max_crops / ht)
    else:
      ht = math.floor(max_crops / wt)
  return (max(1, ht), max(1, wt))


# -- region -------------------------------------------------------------------------------------
def fourier(x, w):
  f = 2 * math.pi * x @ w
  return torch.cat([f.cos(), f.sin()], dim=-1)


def encode_coordinate(state, c):
  return linear(state, "region.coord_encoder", fourier(c, T(state, "region.coord_features")))


def encode_size(state, s):
  return linear(state, "region.size_encoder", fourier(s, T(state, "region.size_features")))


def decode_head(state, head, hidden, mlp_heads):
  if mlp_heads:
    return mlp(state, f"region.{head}", hidden)
  return linear(state, f"region.{head}", layer_norm(state, "region.ln", hidden))
