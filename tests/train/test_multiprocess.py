"""2 processes x 4 CPU devices (jax.distributed on localhost) train like 1 process x 8 devices."""
import json

import numpy as np
import pytest
import jax

from aajax.train import config as config_lib, stages
from tests.train.helpers import TOY, exported, run_processes

pytestmark = pytest.mark.multiprocess

OVERRIDES = ["steps=6", "ckpt_every=3", "log_every=3", "batch_size=16", "optimizer=sgd", "lr=0.1"]


def test_two_processes_match_one(tmp_path):
  one = config_lib.apply_overrides(config_lib.load_config(TOY), OVERRIDES)
  stages.run(one, str(tmp_path / "one"))

  outs = run_processes(tmp_path / "two", [f"--config.{o}" for o in OVERRIDES], timeout=90)
  assert "stage first: finished at step 6" in outs[0]
  assert "8 devices in 2 processes" in outs[0]
  assert "step 3/6" not in outs[1]          # only process 0 reports

  a, b = exported(tmp_path / "one" / "first"), exported(tmp_path / "two" / "first")
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=2e-6, atol=1e-7)   # gloo sums in another order: ~1 ulp
  losses = lambda d: [json.loads(l)["loss"] for l in (d / "first" / "metrics.jsonl").read_text().splitlines()
                      if json.loads(l)["split"] == "train"]
  np.testing.assert_allclose(losses(tmp_path / "one"), losses(tmp_path / "two"), rtol=1e-6)
