"""Small layers shared by every tower: LayerNorm with exact variance, activations, the MLP.

Parameter names follow the PyTorch originals (`fc1`, `fc2`) so converters are a transpose, not a
renaming table.
"""
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


def layer_norm(eps: float, dtype: Dtype = jnp.float32, name: str | None = None) -> nn.LayerNorm:
  # use_fast_variance=False: E[x^2]-E[x]^2 loses ~1e-4 on the outlier channels of trained ViTs.
  return nn.LayerNorm(epsilon=eps, use_fast_variance=False, dtype=dtype, name=name)


def quick_gelu(x):
  return x * jax.nn.sigmoid(1.702 * x)


ACTIVATIONS: dict[str, Callable] = {
    "gelu_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "quick_gelu": quick_gelu,
    "silu": jax.nn.silu,
    "relu": jax.nn.relu,
}


def activation(name: str) -> Callable:
  if name not in ACTIVATIONS:
    raise ValueError(f"unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}")
  return ACTIVATIONS[name]


class Mlp(nn.Module):
  """fc1 -> activation -> fc2, the transformer feed-forward block (out_dim None: back to the input width)."""
  hidden: int
  act: str = "gelu_tanh"
  dtype: Dtype = jnp.float32
  out_dim: int | None = None

  @nn.compact
  def __call__(self, x):
    out = self.out_dim or x.shape[-1]
    x = nn.Dense(self.hidden, dtype=self.dtype, name="fc1")(x)
    x = activation(self.act)(x)
    return nn.Dense(out, dtype=self.dtype, name="fc2")(x)
