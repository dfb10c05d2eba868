"""Prefix-conditioning VLM: frozen ViT -> trainable projection -> decoder-only LM with LoRA.

    image -> VisionTransformer (frozen) -> tokens [B, N, width] -> projection -> [B, N, dim]
    decoder input: [projected image tokens | BOS caption EOS]; loss on the caption positions only

The pieces are the project's own modules applied side by side (not one nested module), so the
decoder's parameter paths are its checkpoint names and LoRA (`aajax.nn.lora`) targets them directly.
Params: {"vision", "projection", "decoder"} (base weights) and {"lora"} (adapters). Only
"projection" and "lora" are trained; the others are frozen and never enter the optimizer.

The image tokens see each other (a bidirectional prefix, as Moondream does) unless
`causal_prefix`; caption tokens see every image token and the caption before them.
Generation is greedy with the decoder's KV cache: one prefill of image tokens + BOS, then one
decode step per token inside a `lax.scan`.
"""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from aajax.decoder import kv_cache as kvc
from aajax.decoder.model import TextDecoder
from aajax.encoders.config import ViTConfig
from aajax.encoders.vit import VisionTransformer
from aajax.nn.layers import Mlp
from aajax.nn.lora import LoraConfig, lora_applied
from aajax.vlm.config import TextConfig


@dataclasses.dataclass(frozen=True)
class PrefixVLMConfig:
  vision: ViTConfig
  text: TextConfig
  lora: LoraConfig = LoraConfig()
  projection: str = "linear"      # "linear" (one Dense) or "mlp" (Dense -> GELU -> Dense, 4x wide)
  causal_prefix: bool = False     # True: image tokens attend causally too (plain decoder-only LM)
  remat: bool = False             # recompute decoder activations in the backward pass


class Projection(nn.Module):
  kind: str
  dim: int

  @nn.compact
  def __call__(self, x):
    if self.kind == "linear":
      return nn.Dense(self.dim, name="fc")(x)
    if self.kind == "mlp":
      return Mlp(4 * self.dim, "gelu_tanh", out_dim=self.dim, name="mlp")(x)
    raise ValueError(f"unknown projection {self.kind!r}; expected 'linear' or 'mlp'")


def shifted_cross_entropy(logits, tokens, loss_mask):
  """Mean next-token loss over target positions, and token accuracy there.

  logits [B, L, V] at the caption positions (position j predicts tokens[j + 1])."""
  logits, targets, mask = logits[:, :-1].astype(jnp.float32), tokens[:, 1:], loss_mask[:, 1:].astype(jnp.float32)
  nll = -jnp.take_along_axis(jax.nn.log_softmax(logits, -1), targets[..., None], -1)[..., 0]
  denom = jnp.maximum(mask.sum(), 1.0)
  correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
  return (nll * mask).sum() / denom, (correct * mask).sum() / denom


def _decoder_init(decoder, x):
  """Touches every decoder parameter (the forward pass alone skips post_ln and lm_head)."""
  return decoder.logits(decoder(x)["hidden"])


class PrefixVLM:
  def __init__(self, cfg: PrefixVLMConfig):
    self.cfg = cfg
    self.vision = VisionTransformer(cfg.vision)
    self.projection = Projection(cfg.projection, cfg.text.dim)
    self.decoder = TextDecoder(cfg.text)
    self.n_image_tokens = cfg.vision.grid ** 2 + cfg.vision.num_prefix_tokens

  def init(self, rng):
    """{"vision", "projection", "decoder"}: random base weights (replace with converted ones)."""
    kv, kp, kd = jax.random.split(rng, 3)
    c = self.cfg
    images = jnp.zeros((1, c.vision.image_size, c.vision.image_size, 3), jnp.float32)
    return {"vision": self.vision.init(kv, images)["params"],
            "projection": self.projection.init(kp, jnp.zeros((1, 1, c.vision.width)))["params"],
            "decoder": self.decoder.init(kd, jnp.zeros((1, 2, c.text.dim)), method=_decoder_init)["params"]}

  def image_prefix(self, params, images):
    """[B, N, dim] decoder inputs from images; the tower is frozen (no gradient through it)."""
    tokens = jax.lax.stop_gradient(self.vision.apply({"params": params["vision"]}, images)["tokens"])
    return self.projection.apply({"params": params["projection"]}, tokens)

  def _decoder(self, decoder_params, lora, rng, fn):
    if lora is None:
      return fn(decoder_params)
    with lora_applied(lora, self.cfg.lora, rng):
      return fn(decoder_params)

  def caption_logits(self, params, images, tokens, rng=None):
    """[B, L, V] float32 logits at the caption positions (teacher forcing). params may hold "lora"."""
    prefix = self.image_prefix(params, images)
    n = prefix.shape[1]
    prefix_len = 0 if self.cfg.causal_prefix else n

    def run(decoder_params):
      words = self.decoder.apply({"params": decoder_params}, tokens, method=TextDecoder.embed)
      x = jnp.concatenate([prefix.astype(words.dtype), words], axis=1)
      hidden = self.decoder.apply({"params": decoder_params}, x, prefix_len=prefix_len)["hidden"][:, n:]
      return self.decoder.apply({"params": decoder_params}, hidden, method=TextDecoder.logits)

    if self.cfg.remat:
      run = jax.checkpoint(run)
    return self._decoder(params["decoder"], params.get("lora"), rng, run)

  def loss(self, params, batch, rng=None):
    logits = self.caption_logits(params, batch["images"], batch["tokens"], rng)
    return shifted_cross_entropy(logits, batch["tokens"], batch["loss_mask"])

  def generate(self, params, images, max_new: int, bos_id: int):
    """Greedy captions [B, max_new] int32 with the KV cache (LoRA unmerged if params hold "lora")."""
    t = self.cfg.text
    prefix = self.image_prefix(params, images)
    b, n = prefix.shape[:2]
    cache = kvc.init_cache(t.n_layers, b, n + 1 + max_new, t.n_kv_heads, t.head_dim)
    prefix_len = 0 if self.cfg.causal_prefix else n

    def run(decoder_params):
      apply = lambda *a, **k: self.decoder.apply({"params": decoder_params}, *a, **k)
      embed = lambda ids: apply(ids, method=TextDecoder.embed)
      first = jnp.concatenate([prefix.astype(jnp.dtype(t.dtype)), embed(jnp.full((b, 1), bos_id, jnp.int32))], 1)
      out = apply(first, cache, prefix_len)
      token = jnp.argmax(apply(out["hidden"][:, -1], method=TextDecoder.logits), -1).astype(jnp.int32)

      def step(carry, _):
        cache, token = carry
        out = apply(embed(token[:, None]), cache, 0)
        nxt = jnp.argmax(apply(out["hidden"][:, -1], method=TextDecoder.logits), -1).astype(jnp.int32)
        return (out["cache"], nxt), token

      (_, last), tokens = jax.lax.scan(step, (out["cache"], token), None, length=max_new - 1)
      return jnp.concatenate([tokens.T, last[:, None]], axis=1)

    return self._decoder(params["decoder"], params.get("lora"), None, run)
