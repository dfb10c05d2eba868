"""Shared pieces of the training tests: the toy config, subprocess launches, param comparison."""
import os
import subprocess
import sys

import jax
import numpy as np

from aajax.train import checkpoint
from aajax.train.toy import get_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOY = os.path.join(ROOT, "aajax", "train", "toy.py")


def toy_config(**overrides):
  config = get_config()
  for k, v in overrides.items():
    config[k] = v
  return config


def launch_cmd(workdir, *args, config=TOY):
  return [sys.executable, "-m", "launch.train", f"--config={config}", f"--workdir={workdir}", *args]


def subprocess_env(devices: int = 8, **extra):
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["JAX_COMPILATION_CACHE_DIR"] = os.path.join(ROOT, ".pytest_cache", "jax")
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  env.update({k: str(v) for k, v in extra.items()})
  return env


def run_launch(workdir, *args, timeout=120, **env):
  return subprocess.run(launch_cmd(workdir, *args), cwd=ROOT, env=subprocess_env(**env), capture_output=True,
                        text=True, timeout=timeout)


def exported(workdir):
  return checkpoint.load_exported(workdir)


def assert_trees_equal(a, b):
  la, lb = jax.tree.leaves_with_path(a), jax.tree.leaves_with_path(b)
  assert [p for p, _ in la] == [p for p, _ in lb]
  for (path, x), (_, y) in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))
