"""Keep freed host memory in the process, so XLA:CPU's per-run scratch buffer is not faulted in anew.

XLA:CPU allocates one scratch buffer per run of a compiled computation (about 600 MB for a SigLIP
B/16 AA training step at batch 4) with malloc, and frees it when the run ends. glibc serves a block
that large with mmap and unmaps it on free, so every run writes to fresh pages: about 150 000 page
faults per step, a fifth of the step's time on 2 cores (`benchmarks/aa.py` records the figures).
With one malloc arena, no mmap-served blocks and a high trim threshold, the freed block stays in the
heap and the next run reuses it. The cost: memory freed by the process is not handed back to the
system, so its resident size stays at its peak.
"""
import ctypes
import os
import platform

OPT_OUT = "AAJAX_RELEASE_HOST_MEMORY"   # =1 keeps glibc's defaults
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8   # mallopt parameters, <malloc.h>
_SETTINGS = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1))


def keep_freed_memory() -> bool:
  """Set glibc malloc to keep freed memory; True where it was applied.

  Call it before the first JAX computation: threads started earlier keep the malloc arena they
  have. Does nothing off glibc Linux, or with AAJAX_RELEASE_HOST_MEMORY=1 in the environment.
  The `launch` and `benchmarks` entry points call it; a script of your own can too.
  """
  if os.environ.get(OPT_OUT) == "1" or platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
    return False
  try:
    libc = ctypes.CDLL("libc.so.6")
  except OSError:
    return False
  return all(libc.mallopt(key, value) == 1 for key, value in _SETTINGS)
