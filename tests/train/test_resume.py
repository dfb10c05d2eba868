"""Interruptions of a real `launch.train` process: SIGKILL then resume is exact; SIGTERM saves, exits 0."""
import json
import os
import signal
import subprocess
import time

from aajax.train import config as config_lib, stages
from tests.train.helpers import ROOT, TOY, assert_trees_equal, exported, launch_cmd, run_launch, subprocess_env

N = 4


def _start(workdir, *args):
  return subprocess.Popen(launch_cmd(workdir, *args), cwd=ROOT, env=subprocess_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def _wait_for(path, proc, timeout=90):
  t0 = time.time()
  while not os.path.exists(path):
    if proc.poll() is not None:
      raise AssertionError(f"process ended before {path} appeared:\n{proc.stdout.read()[-3000:]}")
    if time.time() - t0 > timeout:
      proc.kill()
      raise AssertionError(f"{path} did not appear in {timeout} s")
    time.sleep(0.05)


def test_sigkill_then_resume_is_bit_identical(tmp_path):
  overrides = [f"steps={2 * N}", f"ckpt_every={N}", "log_every=1", "eval_every=0"]
  straight = config_lib.apply_overrides(config_lib.load_config(TOY), overrides)
  stages.run(straight, str(tmp_path / "straight"))

  killed = tmp_path / "killed"
  args = [f"--config.{o}" for o in overrides]
  proc = _start(killed, *args, "--config.toy_delay=0.3")     # slow data: the kill lands between N and 2N
  _wait_for(killed / "first" / "checkpoints" / str(N), proc)
  time.sleep(0.5)
  proc.send_signal(signal.SIGKILL)
  proc.wait(timeout=30)
  assert proc.returncode == -signal.SIGKILL
  assert not (killed / "first" / "export").exists()

  resumed = run_launch(killed, *args)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"resumed from {killed / 'first'} at step {N}" in resumed.stdout
  assert_trees_equal(exported(killed / "first"), exported(tmp_path / "straight" / "first"))
  steps = [json.loads(l)["step"] for l in (killed / "first" / "metrics.jsonl").read_text().splitlines()
           if json.loads(l)["split"] == "train"]
  assert steps == list(range(1, 2 * N + 1))    # the records the killed run wrote past step N were dropped


def test_sigterm_saves_and_exits_zero(tmp_path):
  proc = _start(tmp_path, "--config.steps=1000", "--config.ckpt_every=2", "--config.toy_delay=0.1")
  _wait_for(tmp_path / "first" / "checkpoints" / "2", proc)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=60)
  assert proc.returncode == 0, out[-3000:]
  assert "SIGTERM received: checkpointing step" in out
  stopped = int(out.split("SIGTERM received: checkpointing step ")[1].split()[0])
  assert 2 < stopped < 1000
  assert str(stopped) in os.listdir(tmp_path / "first" / "checkpoints")
  assert "interrupted at step" in out
