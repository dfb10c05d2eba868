"""launch.train at scale: --profile writes a profiler trace, --config.mesh shards, cluster env parsing."""
import glob
import os

import pytest

from aajax.errors import ConfigError
from aajax.train import mesh
from tests.train.helpers import run_launch


def test_profile_flag_writes_a_trace_of_a_sharded_run(tmp_path):
  proc = run_launch(tmp_path, "--profile", "--config.steps=8", "--config.mesh=data:2,fsdp:2",
                    "--config.fsdp_min_size=0", devices=4)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "mesh data 2 x fsdp 2" in proc.stdout
  assert "profiler trace of steps 2..6" in proc.stdout
  traces = glob.glob(os.path.join(tmp_path, "first", "profile", "process_0", "plugins", "profile", "*", "*.xplane.pb"))
  assert traces and os.path.getsize(traces[0]) > 0


def test_bad_mesh_is_a_one_line_error(tmp_path):
  proc = run_launch(tmp_path, "--config.mesh=data:3", devices=4)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1] == ("error: mesh 'data:3' has 3 devices but there are 4; "
                                                  "use -1 for one axis")


def test_local_device_ids_must_be_integers(monkeypatch):
  monkeypatch.setenv("JAX_LOCAL_DEVICE_IDS", "0,one")
  with pytest.raises(ConfigError, match="JAX_LOCAL_DEVICE_IDS"):
    mesh.maybe_initialize_distributed()
