"""Checkpoints: keep last N + best, corrupt latest falls back, exports."""
import glob
import json
import os

import jax
import numpy as np
import pytest

from aajax.errors import CheckpointError
from aajax.train import checkpoint, loop, toy
from tests.train.helpers import assert_trees_equal, toy_config

# orbax's standalone checkpointers leave closed asyncio loops behind for the garbage collector
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def _train(workdir, mesh=None, **kw):
  defaults = dict(steps=8, ckpt_every=2, keep=2, log_every=2, eval_every=2, ckpt_async=False)
  return loop.train(toy.ToyTask(), toy_config(**{**defaults, **kw}), str(workdir), mesh=mesh)


def test_keeps_last_n_and_best(tmp_path):
  result = _train(tmp_path)
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=2)
  assert ckpt.steps() == [6, 8]
  assert result.best["metric"] == "mse" and os.listdir(tmp_path / "best") == [str(result.best["step"])]
  assert ckpt.best_meta()["best"] == result.best
  evals = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in evals if r["split"] == "eval"] == [2, 4, 6, 8]
  ckpt.close()


def _corrupt(step_dir):
  for f in glob.glob(os.path.join(step_dir, "state", "**", "d", "*"), recursive=True):
    with open(f, "wb") as fh:
      fh.write(b"garbage")


def test_corrupt_latest_falls_back_with_warning(tmp_path):
  _train(tmp_path, steps=6)
  reference = _train(tmp_path / "ref", steps=4, export=False)   # the params at step 4
  _corrupt(tmp_path / "checkpoints" / "6")
  os.remove(tmp_path / "done.json")
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=2)
  with pytest.warns(UserWarning, match=r"checkpoints/6 cannot be restored.*falling back"):
    state, meta = ckpt.restore_latest(_abstract_state(reference))
  assert meta["step"] == 4 and meta["data_state"]["index"] == 4
  assert_trees_equal(jax.device_get(state["params"]), jax.device_get(reference.trainable))
  assert os.listdir(tmp_path / "checkpoints_corrupt") == ["6"]
  ckpt.close()
  # the loop then resumes from 4 and writes a fresh step 6
  result = _train(tmp_path, steps=6)
  assert result.step == 6 and 6 in checkpoint.Checkpointer(str(tmp_path)).steps()


def _abstract_state(result):
  from aajax.train import optim
  from aajax.train.mesh import make_mesh
  from aajax.train.step import init_train_state
  tx = optim.from_config(toy_config())
  return init_train_state(make_mesh(), result.trainable, tx, jax.random.key(0))


def test_all_checkpoints_corrupt_is_an_error(tmp_path):
  result = _train(tmp_path, steps=4)
  for d in glob.glob(str(tmp_path / "checkpoints" / "*")):
    _corrupt(d)
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=2)
  with pytest.warns(UserWarning), pytest.raises(CheckpointError, match="no checkpoint .* can be restored"):
    ckpt.restore_latest(_abstract_state(result))
  ckpt.close()


def test_export_roundtrip_and_missing(tmp_path):
  params = {"a": {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}, "b": np.ones(2, np.float32)}
  path = checkpoint.export_params(str(tmp_path), params, {"stage": "x"})
  assert_trees_equal(checkpoint.load_exported(path), params)
  assert_trees_equal(checkpoint.load_exported(str(tmp_path)), params)
  assert checkpoint.read_export_info(str(tmp_path)) == {"stage": "x"}
  with pytest.raises(CheckpointError, match="no exported params"):
    checkpoint.load_exported(str(tmp_path / "nothing"))


def test_two_stages_second_loads_first_export(tmp_path):
  from aajax.train import config as config_lib, stages
  from tests.train.helpers import TOY
  c = config_lib.load_config(TOY + ":two_stage")
  config_lib.apply_overrides(c, ["steps=6", "stage_second.steps=4", "ckpt_every=0", "ckpt_async=false"])
  results = stages.run(c, str(tmp_path))
  first = checkpoint.load_exported(str(tmp_path / "first"))
  np.testing.assert_array_equal(jax.device_get(results["second"].frozen["hidden"]["kernel"]), first["hidden"]["kernel"])
  assert set(checkpoint.load_exported(str(tmp_path / "second"))) == {"head"}
  # a finished run started again trains nothing; --stage=second alone retrains only that stage
  again = stages.run(c, str(tmp_path))
  assert again["first"].step == 6 and again["second"].step == 4
  only = stages.run(c, str(tmp_path), only="second")
  assert list(only) == ["second"]


def test_checkpoint_from_eight_devices_resumes_on_two_then_one(tmp_path):
  from aajax.train.mesh import make_mesh
  kw = dict(optimizer="sgd", lr=0.1, eval_every=0, export=False)
  straight = _train(tmp_path / "straight", steps=8, **kw)
  _train(tmp_path / "moved", steps=4, **kw)                          # 8 devices, checkpoint at 4
  for devices, steps in ((2, 6), (1, 8)):
    resumed = _train(tmp_path / "moved", steps=steps, **kw, mesh=make_mesh(jax.devices()[:devices]))
    assert resumed.trainable["head"]["kernel"].sharding.mesh.devices.size == devices
  for a, b in zip(jax.tree.leaves(jax.device_get(straight.trainable)), jax.tree.leaves(jax.device_get(resumed.trainable))):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_later_stage_alone_needs_earlier_export(tmp_path):
  from aajax.train import config as config_lib, stages
  from tests.train.helpers import TOY
  c = config_lib.load_config(TOY + ":two_stage")
  with pytest.raises(CheckpointError, match=r"stage 'first' has not finished; train it first \(--stage=first\)"):
    stages.run(c, str(tmp_path), only="second")
