"""The two-tower image-text model (SigLIP or CLIP): both towers, L2 normalisation and the logits.

logits[i, j] = exp(logit_scale) * <txt_i, img_j> + logit_bias   (bias only for SigLIP)
SigLIP reads them through a sigmoid, CLIP through a softmax; both are returned raw.
"""
import flax.linen as nn
import jax.numpy as jnp

from aajax.encoders.config import TwoTowerConfig
from aajax.encoders.text import TextTransformer
from aajax.encoders.vit import VisionTransformer


def l2_normalize(x, axis=-1, eps=0.0):
  # eps=0 divides by the plain norm as HF does; big_vision adds 1e-8 to the norm.
  return x / (jnp.linalg.norm(x, axis=axis, keepdims=True) + eps)


class TwoTowerModel(nn.Module):
  cfg: TwoTowerConfig

  def setup(self):
    self.vision = VisionTransformer(self.cfg.vision)
    self.text = TextTransformer(self.cfg.text)
    siglip = self.cfg.family == "siglip"
    # Inits of the originals: SigLIP t'=log 10, b=-10; CLIP log(1/0.07).
    self.logit_scale = self.param("logit_scale", nn.initializers.constant(jnp.log(10.0 if siglip else 1 / 0.07)), ())
    if self.cfg.logit_bias:
      self.logit_bias = self.param("logit_bias", nn.initializers.constant(-10.0), ())

  def encode_image(self, images, **kw):
    return self.vision(images, **kw)

  def encode_text(self, ids, **kw):
    return self.text(ids, **kw)

  def logits(self, img_emb, txt_emb):
    """[num_texts, num_images] logits from unnormalised embeddings."""
    img, txt = l2_normalize(img_emb.astype(jnp.float32)), l2_normalize(txt_emb.astype(jnp.float32))
    out = jnp.exp(self.logit_scale) * txt @ img.T
    return out + self.logit_bias if self.cfg.logit_bias else out

  def __call__(self, images, ids):
    img = self.vision(images)["pooled"]
    txt = self.text.sentence_embedding(ids)
    return {"image_embeds": l2_normalize(img), "text_embeds": l2_normalize(txt),
            "logits_per_text": self.logits(img, txt)}
