"""Both AA stages on 2 processes x 4 CPU devices (jax.distributed on localhost, fsdp within each
process) train like 1 process x 8 devices, and their checkpoints restore onto 2 devices and 1."""
import json
import os

import jax
import numpy as np
import pytest

from aajax.anomaly.tasks import AATask
from aajax.train import checkpoint, config as config_lib, loop, stages
from aajax.train.mesh import make_mesh, to_host
from tests.train.helpers import ROOT, run_processes

pytestmark = pytest.mark.multiprocess

CONFIG = os.path.join(ROOT, "configs", "aa_siglip.py")
# the tiny AA model of tests/anomaly/test_aa_steps.py, three steps a stage, SGD (a wrongly scaled
# gradient would show), a checkpoint at step 2 and the final one at 3
OVERRIDES = [
    "model.tower.width=32", "model.tower.depth=4", "model.tower.heads=2", "model.tower.mlp_dim=64",
    "model.tower.image_size=32", "model.tower.text_len=12", "model.tower.vocab=512", "model.image_size=32",
    "model.text_adapt_until=1", "data.classes=brick,coins", "data.synthetic.image_size=32",
    "data.synthetic.n_train=8", "data.synthetic.n_test=4", "eval.heatmaps_per_class=0", "eval.batch_size=8",
    "optimizer=sgd", "log_every=1",
    "stage_text.steps=3", "stage_text.batch_size=8", "stage_text.lr=0.5", "stage_text.ckpt_every=2",
    "stage_image.steps=3", "stage_image.batch_size=8", "stage_image.lr=0.5", "stage_image.ckpt_every=2",
]
SHARDED = ["mesh=data:2,fsdp:4", "fsdp_min_size=0"]


def _config(extra=()):
  return config_lib.apply_overrides(config_lib.load_config(CONFIG), OVERRIDES + list(extra))


def _losses(stage_dir):
  records = [json.loads(l) for l in (stage_dir / "metrics.jsonl").read_text().splitlines()]
  return [r["loss"] for r in records if r["split"] == "train"]


def test_two_processes_match_one_and_restore_on_fewer_devices(tmp_path):
  outs = run_processes(tmp_path / "two", [f"--config.{o}" for o in OVERRIDES + SHARDED], config=CONFIG)   # first: the in-process run below would hold both cores
  stages.run(_config(), str(tmp_path / "one"))
  assert "8 devices in 2 processes" in outs[0]
  assert "mesh data 2 x fsdp 4" in outs[0]
  assert "stage text: finished at step 3" in outs[0] and "stage image: finished at step 3" in outs[0]
  assert "step 2/3" not in outs[1]   # only process 0 reports

  for stage in ("text", "image"):
    one, two = tmp_path / "one" / stage, tmp_path / "two" / stage
    np.testing.assert_allclose(_losses(two), _losses(one), rtol=1e-4)
    a, b = checkpoint.load_exported(str(one)), checkpoint.load_exported(str(two))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
      np.testing.assert_allclose(y, x, rtol=1e-4, atol=1e-4 * np.abs(x).max())   # 1.2e-6 measured: sums in another order
  assert (tmp_path / "two" / "image" / "model" / "config.json").exists()   # the exported model directory

  # the 8-device sharded checkpoints restore onto 2 devices (fsdp 2) and onto 1
  exports = {"text": checkpoint.export_dir(str(tmp_path / "two" / "text"))}
  for stage in ("text", "image"):
    stage_dir = tmp_path / "two" / stage
    final = checkpoint.load_exported(str(stage_dir))
    for devices, spec in ((2, "fsdp:2"), (1, "data:1")):
      sc = stages.stage_config(_config(["fsdp_min_size=0"]), stage, exports)
      mesh = make_mesh(jax.devices()[:devices], spec)
      prepared = loop.prepare(AATask(), sc, mesh)
      ckpt = checkpoint.Checkpointer(str(stage_dir))
      try:
        state, meta = ckpt.restore_latest(prepared.state)
      finally:
        ckpt.close()
      assert int(to_host(state["step"])) == 3 and meta["stage"] == stage
      assert {d.id for x in jax.tree.leaves(state["params"]) for d in x.sharding.device_set} <= {0, 1}
      if devices == 2:
        assert any("fsdp" in x.sharding.spec for x in jax.tree.leaves(state["params"]))
      for x, y in zip(jax.tree.leaves(to_host(state["params"])), jax.tree.leaves(final)):
        np.testing.assert_array_equal(x, y)
