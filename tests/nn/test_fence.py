import jax
import jax.numpy as jnp
import numpy as np

from aajax.nn.fence import backward_fence


def test_forward_is_identity_and_gradient_is_exact():
  rng = np.random.default_rng(0)
  for shape in [(2, 5, 16), (3, 7)]:   # a multiple of the block, and not one
    x = jnp.asarray(rng.standard_normal(shape).astype(np.float32))
    w = jnp.asarray(rng.standard_normal(shape).astype(np.float32) * 1e3)
    assert (backward_fence(x) == x).all()
    f = lambda x: jnp.sum(jnp.sin(backward_fence(x * 1.5)) * w)
    g = lambda x: jnp.sum(jnp.sin(x * 1.5) * w)
    np.testing.assert_array_equal(jax.jit(jax.grad(f))(x), jax.jit(jax.grad(g))(x))


def test_bfloat16():
  x = jnp.linspace(-2, 2, 64, dtype=jnp.bfloat16).reshape(8, 8)
  assert jax.grad(lambda x: jnp.sum(backward_fence(x) ** 2).astype(jnp.float32))(x).dtype == jnp.bfloat16
  np.testing.assert_array_equal(jax.grad(lambda x: jnp.sum(backward_fence(x) ** 2))(x), 2 * x)
