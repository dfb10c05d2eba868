"""The cluster launch files: the Slurm batch script runs a real 2-process job step through a stand-in
`srun` (JAX's own Slurm detection on localhost CPUs); the TPU pod script prints its gcloud commands."""
import os
import socket
import stat
import subprocess
import sys

import pytest

from tests.train.helpers import ROOT, TOY, subprocess_env

SBATCH = os.path.join(ROOT, "launch", "slurm", "aa_gpu.sbatch")
POD = os.path.join(ROOT, "launch", "tpu", "aa_pod.sh")

# Starts SLURM_NTASKS copies of the command here, each with the variables Slurm gives a task.
FAKE_SRUN = """#!/bin/bash
while [[ "$1" == --* ]]; do shift; done
pids=()
for ((i = 0; i < SLURM_NTASKS; i++)); do
  SLURM_PROCID=$i SLURM_LOCALID=$i "$@" &
  pids+=($!)
done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=1; done
exit $rc
"""


def _slurm_job_id() -> int:
  """A job id whose coordinator port (JAX: id % 4096 + 61440) is free now."""
  for _ in range(50):
    with socket.socket() as s:
      s.bind(("127.0.0.1", 0))
      port = s.getsockname()[1]
    if port >= 61440:
      return port - 61440 + 4096
  with socket.socket() as s:
    for port in range(61440 + os.getpid() % 4000, 65535):
      try:
        s.bind(("127.0.0.1", port))
        return port - 61440 + 4096
      except OSError:
        continue
  pytest.skip("no free port in the range JAX's Slurm detection uses")


@pytest.mark.multiprocess
def test_slurm_script_runs_a_two_process_job_step(tmp_path):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  (bin_dir / "srun").write_text(FAKE_SRUN)
  (bin_dir / "srun").chmod(stat.S_IRWXU)
  env = subprocess_env(devices=4, SLURM_JOB_ID=_slurm_job_id(), SLURM_NTASKS=2, SLURM_NNODES=1,
                       SLURM_STEP_NODELIST="localhost", SLURM_SUBMIT_DIR=ROOT, VENV=str(tmp_path / "no_venv"),
                       MESH="data:2,fsdp:4",
                       PATH=os.pathsep.join([str(bin_dir), os.path.dirname(sys.executable), os.environ["PATH"]]))
  workdir = tmp_path / "run"
  proc = subprocess.run(["bash", SBATCH, TOY, str(workdir), "--config.steps=4", "--config.fsdp_min_size=0"],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
  assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
  assert "aa_gpu: 1 node(s), 2 process(es), mesh data:2,fsdp:4" in proc.stdout
  assert "8 devices in 2 processes" in proc.stdout and "mesh data 2 x fsdp 4" in proc.stdout
  assert "stage first: finished at step 4" in proc.stdout
  assert (workdir / "first" / "export" / "params").is_dir()


def test_slurm_script_needs_config_and_workdir():
  proc = subprocess.run(["bash", SBATCH], capture_output=True, text=True)
  assert proc.returncode != 0 and "usage: sbatch launch/slurm/aa_gpu.sbatch" in proc.stderr


def test_tpu_pod_script_prints_its_commands():
  env = dict(os.environ, TPU_NAME="aa-v5p-32", ZONE="us-east5-a", PROJECT="proj", DRY_RUN="1")
  run = lambda *args: subprocess.run(["bash", POD, *args], cwd=ROOT, env=env, capture_output=True, text=True)
  train = run("train", "configs/aa_clip.py", "/mnt/shared/runs/aa_clip", "--config.model.init=/mnt/shared/models/l336")
  assert train.returncode == 0, train.stderr
  line = train.stdout.strip().splitlines()[-1]
  assert line.startswith("gcloud compute tpus tpu-vm ssh aa-v5p-32 --zone=us-east5-a --project=proj --worker=all")
  for part in ("python -m launch.train", "--distributed", "--config=configs/aa_clip.py",
               "--workdir=/mnt/shared/runs/aa_clip", "--config.model.init=/mnt/shared/models/l336"):
    assert part in line
  setup = run("setup")
  assert setup.returncode == 0 and "tpu-vm scp" in setup.stdout and "--worker=all" in setup.stdout
  assert run("bogus").returncode != 0
