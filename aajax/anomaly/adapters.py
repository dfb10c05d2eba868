"""AA-CLIP's trainable parts: norm-matched residual adapters, projectors, stage-1 cross-attention.

Residual adapter (after an early block, on every token):
    a = LeakyReLU(W x)            W square, no bias
    a = a * |x| / |a|             per token: the adapter only changes the direction
    x = lam * a + (1 - lam) * x   lam = 0.1
All weights are Xavier-uniform initialised, as in the reference.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from aajax.nn.attention import MultiHeadAttention
from aajax.nn.fence import backward_fence

xavier = nn.initializers.xavier_uniform()


def leaky_relu(x):
  return jax.nn.leaky_relu(x, negative_slope=0.01)  # torch's default slope


class ResidualAdapter(nn.Module):
  weight: float = 0.1
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    a = leaky_relu(nn.Dense(x.shape[-1], use_bias=False, kernel_init=xavier, dtype=self.dtype, name="fc")(x))
    # The reference divides without an epsilon; a zero adapter output would be a NaN there too,
    # but a tiny floor keeps bf16 and padded tokens finite.
    a = a * (jnp.linalg.norm(x, axis=-1, keepdims=True) / jnp.maximum(jnp.linalg.norm(a, axis=-1, keepdims=True), 1e-12))
    # the fence keeps XLA:CPU from recomputing the later blocks' cotangent chain in this adapter's
    # weight gradient (aajax.nn.fence)
    return backward_fence(self.weight * a + (1 - self.weight) * x)


class Projector(nn.Module):
  """Linear without bias, optionally followed by LeakyReLU."""
  features: int
  relu: bool = False
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    y = nn.Dense(self.features, use_bias=False, kernel_init=xavier, dtype=self.dtype, name="fc")(x)
    return leaky_relu(y) if self.relu else y


class TextImageCrossAttention(nn.Module):
  """Stage-1 variant: text tokens (queries) attend to image context tokens; residual, with dropout.

  Every sentence token attends independently, so the tokens of all sentences tied to one image are
  concatenated into one query sequence against that image's context.
  """
  heads: int = 8
  dropout: float = 0.1
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, text, context, deterministic: bool = True):
    """text [B, Q, D] queries; context [B, K, E] keys/values -> text + attn (same shape)."""
    # A zero output projection makes the variant start exactly at the plain text path.
    attn = MultiHeadAttention(self.heads, self.dtype, out_kernel_init=nn.initializers.zeros, name="attn")
    out = attn(text, context=context)
    return text + nn.Dropout(self.dropout)(out, deterministic=deterministic)
