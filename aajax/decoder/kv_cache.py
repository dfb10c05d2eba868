"""The decoder's KV cache: a pytree with a static shape and a per-row position index.

    {"k": (L arrays [B, S, n_kv_heads, head_dim]), "v": (same), "length": int32 [B]}

`length[b]` is the number of positions of row b already written (the position of its next token).
Every row may be at a different position, so a batch can mix prompts of different lengths: a step
writes T new positions at `length[b] ... length[b] + T - 1` and advances `length` by the number of
real (non-padding) tokens of each row. Slots at or beyond `length` may hold stale values from
padding; attention never reads them because a query at position p sees only slots <= p (plus the
bidirectional prefix), and the next step overwrites them before they become visible.
"""
import jax
import jax.numpy as jnp

from aajax.errors import InputError


def init_cache(n_layers: int, batch: int, size: int, n_kv_heads: int, head_dim: int, dtype=jnp.float32):
  zeros = lambda: jnp.zeros((batch, size, n_kv_heads, head_dim), dtype)
  return {"k": tuple(zeros() for _ in range(n_layers)), "v": tuple(zeros() for _ in range(n_layers)),
          "length": jnp.zeros((batch,), jnp.int32)}


def cache_size(cache) -> int:
  return cache["k"][0].shape[1]


def cache_batch(cache) -> int:
  return cache["k"][0].shape[0]


def resize_cache(cache, size: int):
  """Grow (zero-pad) or shrink the slot axis to `size`; shrinking keeps the first `size` slots."""
  old = cache_size(cache)
  if size == old:
    return cache
  if size < old:
    cut = lambda a: a[:, :size]
  else:
    cut = lambda a: jnp.pad(a, ((0, 0), (0, size - old), (0, 0), (0, 0)))
  return {"k": tuple(map(cut, cache["k"])), "v": tuple(map(cut, cache["v"])),
          "length": jnp.minimum(cache["length"], size)}


def repeat_cache(cache, n: int):
  """Each row repeated n times (several prompts about one encoded image)."""
  rep = lambda a: jnp.repeat(a, n, axis=0)
  return jax.tree.map(rep, cache)


def stack_caches(caches):
  """Concatenate caches of equal slot count along the batch axis."""
  return jax.tree.map(lambda *a: jnp.concatenate(a, axis=0), *caches)


def write(cache_layer, new, starts):
  """cache_layer [B, S, H, hd] with new [B, T, H, hd] written at row-wise slot offsets starts [B]."""
  update = lambda c, n, s: jax.lax.dynamic_update_slice(c, n.astype(c.dtype), (s, 0, 0))
  return jax.vmap(update)(cache_layer, new, starts)


def check_room(cache, needed: int, max_context: int):
  """Raise before a step that would run past the cache (XLA would silently clamp the write)."""
  size = cache_size(cache)
  if needed > max_context:
    raise InputError(f"sequence of {needed} positions exceeds the model's context of {max_context}")
  if needed > size:
    raise InputError(f"sequence of {needed} positions exceeds the KV cache of {size} slots; "
                     f"grow it with resize_cache first")
