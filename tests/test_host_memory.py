"""aajax.host_memory: with it, XLA:CPU's scratch buffer is reused between runs instead of faulted in anew."""
import os
import subprocess
import sys

import pytest

from aajax import host_memory

PROBE = r"""
import resource, sys
from aajax.host_memory import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else False
import jax, jax.numpy as jnp
# a 64 MB product in XLA's scratch buffer (larger than glibc's largest heap-served block, 32 MB)
f = jax.jit(lambda x, w, v: (jnp.tanh(x @ w) @ v).sum())
x, w, v = jnp.ones((8192, 64)), jnp.ones((64, 2048)) / 64, jnp.ones((2048, 8))
f(x, w, v).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
  f(x, w, v).block_until_ready()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def probe(mode, **env):
  out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True,
                       env={**os.environ, **env}).stdout.split()
  return out[0] == "True", int(out[1])


@pytest.mark.skipif(sys.platform != "linux", reason="glibc malloc only")
def test_scratch_memory_is_reused_between_runs():
  applied, faults = probe("keep")
  _, default_faults = probe("default")
  assert applied
  pages = 3 * (16 << 20) * 4 // os.sysconf("SC_PAGE_SIZE")   # three runs of the 64 MB product
  assert default_faults > pages, default_faults          # glibc's default: fresh pages on every run
  assert faults < default_faults // 20, (faults, default_faults)


def test_opt_out_keeps_glibc_defaults():
  applied, _ = probe("keep", **{host_memory.OPT_OUT: "1"})
  assert not applied
