"""An identity whose cotangent is materialised once: a fusion fence for the backward pass (XLA:CPU).

In the backward pass of a residual tower, the cotangent of the residual stream is a long chain of
elementwise adds and layer-norm terms, one group per block. XLA:CPU duplicates cheap elementwise
producers into each consumer's fusion, so the fusion that feeds an early adapter's weight gradient
recomputed the whole chain of the later blocks, with the transposed (strided) access that weight
gradient asks for. Measured on the AA demo's stage 2: one 359-instruction fusion, 24 ms of a 280 ms
step. `lax.optimization_barrier` does not stop this: XLA:CPU removes barriers before fusing.

The fence multiplies the cotangent by an 8 x 8 identity in a matmul, which no fusion absorbs, so
the cotangent is computed once into a buffer (16 flops per element, exact at HIGHEST precision).
Other backends fuse differently and get the plain identity.
"""
import jax
import jax.numpy as jnp

_BLOCK = 8


@jax.custom_vjp
def backward_fence(x):
  return x


def _fwd(x):
  return x, None


def _bwd(_, g):
  if jax.default_backend() != "cpu" or g.size % _BLOCK:
    return (g,)
  eye = jnp.eye(_BLOCK, dtype=g.dtype)
  return (jnp.dot(g.reshape(-1, _BLOCK), eye, precision=jax.lax.Precision.HIGHEST).reshape(g.shape),)


backward_fence.defvjp(_fwd, _bwd)
