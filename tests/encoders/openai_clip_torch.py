"""A small torch CLIP with OpenAI's module names and layout, the reference for OpenAI-named checkpoints.

It follows OpenAI's `clip/model.py` (and open_clip's `CLIP` with its default settings): LND layout,
`nn.MultiheadAttention` with fused in_proj, `mlp.c_fc/c_proj`, raw `visual.proj` and
`text_projection` used as `x @ P`, ln_post on the CLS token, EOT pooling by argmax of the ids.
It is TorchScript-compatible so tests can also write OpenAI-style JIT archives.
"""
import math
import warnings
from collections import OrderedDict
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn


class QuickGELU(nn.Module):
  def forward(self, x):
    return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
  def __init__(self, width: int, heads: int, act: str):
    super().__init__()
    self.attn = nn.MultiheadAttention(width, heads)
    self.ln_1 = nn.LayerNorm(width)
    self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(width, 4 * width)),
                                          ("gelu", QuickGELU() if act == "quick_gelu" else nn.GELU()),
                                          ("c_proj", nn.Linear(4 * width, width))]))
    self.ln_2 = nn.LayerNorm(width)

  def forward(self, x, attn_mask: Optional[torch.Tensor]):
    h = self.ln_1(x)
    x = x + self.attn(h, h, h, need_weights=False, attn_mask=attn_mask)[0]
    return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
  def __init__(self, width: int, layers: int, heads: int, act: str):
    super().__init__()
    self.resblocks = nn.ModuleList([ResidualAttentionBlock(width, heads, act) for _ in range(layers)])

  def forward(self, x, attn_mask: Optional[torch.Tensor]) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    hidden = [x.permute(1, 0, 2)]
    for block in self.resblocks:
      x = block(x, attn_mask)
      hidden.append(x.permute(1, 0, 2))
    return x, hidden


class VisionTransformer(nn.Module):
  def __init__(self, image_size: int, patch: int, width: int, layers: int, heads: int, out_dim: int, act: str):
    super().__init__()
    scale = width ** -0.5
    self.conv1 = nn.Conv2d(3, width, kernel_size=patch, stride=patch, bias=False)
    self.class_embedding = nn.Parameter(scale * torch.randn(width))
    self.positional_embedding = nn.Parameter(scale * torch.randn((image_size // patch) ** 2 + 1, width))
    self.ln_pre = nn.LayerNorm(width)
    self.transformer = Transformer(width, layers, heads, act)
    self.ln_post = nn.LayerNorm(width)
    self.proj = nn.Parameter(scale * torch.randn(width, out_dim))

  def forward(self, x) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    x = self.conv1(x)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    cls = self.class_embedding.to(x.dtype) + torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype)
    x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
    x = self.ln_pre(x).permute(1, 0, 2)
    x, hidden = self.transformer(x, None)
    x = self.ln_post(x.permute(1, 0, 2)[:, 0, :])
    return x @ self.proj, hidden


class OpenAICLIP(nn.Module):
  def __init__(self, embed_dim, image_size, patch, width, layers, text_width, text_layers, vocab=49408,
               context=77, act="quick_gelu"):
    super().__init__()
    self.context = context
    self.visual = VisionTransformer(image_size, patch, width, layers, width // 64, embed_dim, act)
    self.transformer = Transformer(text_width, text_layers, text_width // 64, act)
    self.token_embedding = nn.Embedding(vocab, text_width)
    self.positional_embedding = nn.Parameter(0.01 * torch.randn(context, text_width))
    self.ln_final = nn.LayerNorm(text_width)
    self.text_projection = nn.Parameter(text_width ** -0.5 * torch.randn(text_width, embed_dim))
    self.logit_scale = nn.Parameter(torch.ones([]) * math.log(1 / 0.07))

  def causal_mask(self, n: int):
    return torch.full((n, n), float("-inf")).triu(1)

  def encode_image(self, images) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    return self.visual(images)

  def encode_text(self, text) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    x = self.token_embedding(text) + self.positional_embedding[: text.shape[1]]
    x, hidden = self.transformer(x.permute(1, 0, 2), self.causal_mask(text.shape[1]))
    x = self.ln_final(x.permute(1, 0, 2))
    x = x[torch.arange(x.shape[0]), text.argmax(dim=-1)] @ self.text_projection
    return x, hidden

  def forward(self, images, text):
    img, _ = self.encode_image(images)
    txt, _ = self.encode_text(text)
    img = img / torch.linalg.vector_norm(img, dim=-1, keepdim=True)
    txt = txt / torch.linalg.vector_norm(txt, dim=-1, keepdim=True)
    return img, txt, self.logit_scale.exp() * txt @ img.t()


def randomize_(model: nn.Module, seed: int = 0):
  """Non-trivial LayerNorm and bias values, so a swapped or missing tensor shows in the outputs."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "ln_" in name or name.endswith("bias"):
        p.add_(0.1 * torch.randn(p.shape, generator=g))
  return model


def resize_pos_embed(table: torch.Tensor, new_grid: int) -> torch.Tensor:
  """open_clip's `resize_pos_embed`: class row kept, grid resized bicubic with antialias."""
  cls, grid = table[:1], table[1:]
  g = math.isqrt(grid.shape[0])
  grid = grid.reshape(1, g, g, -1).permute(0, 3, 1, 2)
  grid = F.interpolate(grid, size=(new_grid, new_grid), mode="bicubic", antialias=True, align_corners=False)
  return torch.cat([cls, grid.permute(0, 2, 3, 1).reshape(new_grid * new_grid, -1)], dim=0)


def save_torchscript(model: OpenAICLIP, image_size: int, path: str):
  """An OpenAI-style JIT archive: the scripted model plus the three scalars OpenAI's files carry."""
  model.register_buffer("input_resolution", torch.tensor(image_size))
  model.register_buffer("context_length", torch.tensor(model.context))
  model.register_buffer("vocab_size", torch.tensor(model.token_embedding.num_embeddings))
  with warnings.catch_warnings():  # TorchScript is deprecated, but it is the format OpenAI released
    warnings.simplefilter("ignore", DeprecationWarning)
    torch.jit.script(model).save(path)
