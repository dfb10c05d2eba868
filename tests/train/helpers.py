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


def run_processes(workdir, args, config=TOY, processes: int = 2, devices: int = 4, timeout: float = 240) -> list:
  """launch.train as `processes` jax.distributed processes on localhost with `devices` CPU devices
  each; asserts they all exit 0 and returns their outputs (all are killed if one hangs)."""
  import socket
  import subprocess
  with socket.socket() as s:   # a free port for the coordinator
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  procs = [subprocess.Popen(launch_cmd(workdir, *args, config=config), cwd=ROOT,
                            env=subprocess_env(devices=devices, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                                               JAX_NUM_PROCESSES=processes, JAX_PROCESS_ID=i),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(processes)]
  outs = []
  for p in procs:
    try:
      outs.append(p.communicate(timeout=timeout)[0])
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-4000:]
  return outs


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
