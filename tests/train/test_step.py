"""The sharded train step: loss falls, 8 devices == 1 device, accumulation == big batch, freezing, bf16."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aajax.train import loop, optim, toy
from aajax.train.mesh import make_mesh, replicate, shard_batch, to_host
from aajax.train.step import init_train_state, make_eval_step, make_train_step
from tests.train.helpers import toy_config


def _setup(config, mesh):
  task = toy.ToyTask()
  config.stage = "first"
  frozen, trainable = task.init(jax.random.key(0), config)
  tx = optim.from_config(config)
  state = init_train_state(mesh, replicate(mesh, trainable), tx, jax.random.key(1))
  batch = toy.make_batch(0, 0, config.batch_size, config.toy_dim, config.toy_width)
  return task, tx, state, replicate(mesh, frozen), shard_batch(mesh, batch, config.batch_size)


def _one_step(config, mesh, **kw):
  task, tx, state, frozen, batch = _setup(config, mesh)
  state, metrics = make_train_step(task.loss_fn, tx, mesh, **kw)(state, frozen, batch)
  return to_host(state), to_host(metrics)


def test_loss_falls(tmp_path):
  result = loop.train(toy.ToyTask(), toy_config(steps=60, lr=3e-2, log_every=10, ckpt_every=0), str(tmp_path))
  lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  import json
  losses = [json.loads(l)["loss"] for l in lines if json.loads(l)["split"] == "train"]
  assert losses[-1] < 0.3 * losses[0], losses
  assert result.eval_metrics["mse"] < 0.2
  assert result.step == 60 and not result.interrupted and result.export


def test_eight_devices_equal_one_device():
  assert jax.device_count() == 8
  config = toy_config(batch_size=16, optimizer="sgd", lr=0.1)   # sgd: an n-times gradient would show (Adam hides scale)
  s8, m8 = _one_step(config, make_mesh())
  s1, m1 = _one_step(config, make_mesh(jax.devices()[:1]))
  np.testing.assert_allclose(m8["loss"], m1["loss"], rtol=1e-6)
  np.testing.assert_allclose(m8["grad_norm"], m1["grad_norm"], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(s8["params"]), jax.tree.leaves(s1["params"])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  # and the step moved the params: the comparison is not between two untouched trees
  _, _, s0, _, _ = _setup(config, make_mesh())
  assert not np.allclose(to_host(s0["params"]["head"]["kernel"]), s8["params"]["head"]["kernel"])


def test_gradient_accumulation_equals_big_batch():
  config = toy_config(batch_size=32, optimizer="sgd", lr=0.1)
  s_big, m_big = _one_step(config, make_mesh())
  s_acc, m_acc = _one_step(config, make_mesh(), accum=4)
  np.testing.assert_allclose(m_big["loss"], m_acc["loss"], rtol=1e-6)
  for a, b in zip(jax.tree.leaves(s_big["params"]), jax.tree.leaves(s_acc["params"])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_frozen_params_get_no_optimizer_state():
  config = toy_config(freeze=("hidden/",))
  mesh = make_mesh()
  task, tx, state, frozen, batch = _setup(config, mesh)
  head_size = sum(x.size for x in jax.tree.leaves(state["params"]["head"]))
  assert optim.state_size(state["opt_state"]) == 2 * head_size   # Adam mu + nu of the head only
  before = to_host(state["params"])
  state, _ = make_train_step(task.loss_fn, tx, mesh)(state, frozen, batch)
  after = to_host(state["params"])
  np.testing.assert_array_equal(before["hidden"]["kernel"], after["hidden"]["kernel"])
  assert not np.array_equal(before["head"]["kernel"], after["head"]["kernel"])


def test_bfloat16_compute_keeps_float32_master():
  config = toy_config()
  s32, m32 = _one_step(config, make_mesh())
  s16, m16 = _one_step(config, make_mesh(), dtype="bfloat16")
  assert all(x.dtype == np.float32 for x in jax.tree.leaves(s16["params"]))
  assert all(x.dtype == np.float32 for x in jax.tree.leaves(s16["opt_state"]) if x.dtype.kind == "f")
  np.testing.assert_allclose(m16["loss"], m32["loss"], rtol=3e-2)


def test_per_device_rng_differs_and_is_reproducible():
  config = toy_config(toy_noise=1.0)
  a = _one_step(config, make_mesh())[1]["loss"]
  b = _one_step(config, make_mesh())[1]["loss"]
  c = _one_step(toy_config(), make_mesh())[1]["loss"]
  assert a == b and a != c


def test_eval_step_averages_over_devices():
  config = toy_config(batch_size=16)
  mesh = make_mesh()
  task, _, state, frozen, batch = _setup(config, mesh)
  metric = lambda t, f, b, r: task.loss_fn(t, f, b, r)[1]
  rng = replicate(mesh, jax.random.key_data(jax.random.key(0)))
  got = to_host(make_eval_step(metric, mesh)(state["params"], frozen, batch, rng))
  host = toy.make_batch(0, 0, 16, config.toy_dim, config.toy_width)
  want = task.loss_fn(to_host(state["params"]), to_host(frozen), host, None)[0]
  np.testing.assert_allclose(got["mse"], want, rtol=1e-5)


@pytest.mark.parametrize("schedule,expect", [
    ("multistep", [1.0, 1.0, 0.5, 0.5, 0.25]),   # milestones (2, 4): update 2 is the first at lr/2
    ("constant", [1.0] * 5),
])
def test_schedules(schedule, expect):
  config = toy_config(lr=1.0, schedule=schedule, milestones=(2, 4), gamma=0.5, steps=5)
  fn = optim.lr_schedule(config)
  np.testing.assert_allclose([float(fn(jnp.int32(i))) for i in range(5)], expect, rtol=1e-6)


def test_warmup_cosine():
  config = toy_config(lr=1.0, schedule="warmup_cosine", warmup_steps=4, steps=14)
  fn = optim.lr_schedule(config)
  values = [float(fn(jnp.int32(i))) for i in range(15)]
  np.testing.assert_allclose(values[:4], [0.25, 0.5, 0.75, 1.0], rtol=1e-6)
  assert values[4] == pytest.approx(1.0) and values[14] == pytest.approx(0.0, abs=1e-6)
  assert all(a >= b for a, b in zip(values[4:], values[5:]))


def test_divergence_stops_with_a_clear_error(tmp_path):
  from aajax.errors import AajaxError
  with pytest.raises(AajaxError, match=r"training diverged by step 5 \(.*loss=(nan|inf)"):
    loop.train(toy.ToyTask(), toy_config(steps=20, lr=1e30, optimizer="sgd", log_every=5, ckpt_every=0), str(tmp_path))
