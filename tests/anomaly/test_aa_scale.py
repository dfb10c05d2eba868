"""AA stages at scale: fsdp-sharded == replicated, bf16 compute, gradient accumulation, remat policies."""
import jax
import numpy as np
import pytest

from aajax.anomaly.tasks import AATask
from aajax.train import checkpoint, loop
from aajax.train.mesh import make_mesh, shard_batch, to_host
from aajax.train.stages import stage_config
from tests.anomaly.test_aa_steps import tiny_config


def run_step(config, stage, mesh, exports=None, **overrides):
  """One train step of an AA stage -> (params before, params after, metrics, state, prepared)."""
  sc = stage_config(config, stage, exports)
  sc.update(overrides)
  task = AATask()
  prepared = loop.prepare(task, sc, mesh)
  before = to_host(prepared.state["params"])
  step = prepared.train_step(task, sc, donate=False)
  state, metrics = step(prepared.state, prepared.frozen, shard_batch(mesh, next(task.train_data(sc, None)), sc.batch_size))
  return before, to_host(state["params"]), to_host(metrics), state, prepared


def assert_same_update(a, b, before, rtol=1e-3):
  for x, y, x0 in zip(jax.tree.leaves(a), jax.tree.leaves(b), jax.tree.leaves(before)):
    scale = np.abs(y - x0).max()
    assert scale > 0   # the step moved every trainable tensor
    np.testing.assert_allclose(x - x0, y - x0, rtol=rtol, atol=rtol * scale)


@pytest.fixture(scope="module")
def text_export(tmp_path_factory):
  _, params, _, _, _ = run_step(tiny_config(), "text", make_mesh(jax.devices()[:1]))
  return {"text": checkpoint.export_params(str(tmp_path_factory.mktemp("text")), params)}


_REFERENCE = {}


def reference(stage, exports):
  """The replicated 8-device step of a stage (computed once, shared by the tests below)."""
  if stage not in _REFERENCE:
    _REFERENCE[stage] = run_step(tiny_config(), stage, make_mesh(), exports)[:3]
  return _REFERENCE[stage]


@pytest.mark.parametrize("stage", ["text", "image"])
def test_fsdp_sharded_step_equals_replicated(stage, text_export):
  config = tiny_config()
  config.fsdp_min_size = 0   # shard every leaf that divides, not just the big ones
  exports = text_export if stage == "image" else None
  before, ref, m_ref = reference(stage, exports)
  _, got, m_got, state, prepared = run_step(config, stage, make_mesh(spec="data:2,fsdp:4"), exports)
  np.testing.assert_allclose(m_got["loss"], m_ref["loss"], rtol=1e-5)
  assert_same_update(got, ref, before)
  # the frozen backbone and the trainable adapters are really split four ways
  frozen = prepared.frozen["params"] if stage == "image" else prepared.frozen
  qkv = frozen["backbone"]["vision"]["layers_0"]["attn"]
  assert any("fsdp" in x.sharding.spec for x in jax.tree.leaves(qkv))
  local = lambda tree: sum(x.addressable_shards[0].data.size for x in jax.tree.leaves(tree))
  whole = lambda tree: sum(x.size for x in jax.tree.leaves(tree))
  assert local(prepared.frozen) < 0.4 * whole(prepared.frozen)
  assert local(state["params"]) < 0.4 * whole(state["params"])


def test_bfloat16_compute_keeps_float32_master(text_export):
  config = tiny_config()
  _, p32, m32 = reference("image", text_export)
  _, p16, m16, state, prepared = run_step(config, "image", make_mesh(spec="data:2,fsdp:4"), text_export,
                                          dtype="bfloat16", fsdp_min_size=0)
  assert all(x.dtype == np.float32 for x in jax.tree.leaves(p16))
  assert all(x.dtype == np.float32 for x in jax.tree.leaves(to_host(state["opt_state"])) if x.dtype.kind == "f")
  assert all(x.dtype == jax.numpy.bfloat16 for x in jax.tree.leaves(prepared.frozen["params"]))   # stored in bf16
  np.testing.assert_allclose(m16["loss"], m32["loss"], rtol=3e-2)


def test_gradient_accumulation_equals_whole_batch(text_export):
  config = tiny_config()
  before, whole, m_whole = reference("image", text_export)
  _, acc, m_acc, _, _ = run_step(config, "image", make_mesh(jax.devices()[:2]), text_export, accum=4)   # 4 micro-batches of 1
  np.testing.assert_allclose(m_acc["loss"], m_whole["loss"], rtol=1e-5)
  assert_same_update(acc, whole, before)


def test_remat_policy_gives_the_same_step(text_export):
  config = tiny_config()
  before, plain, _ = reference("image", text_export)
  config.stage_image.model = {"remat": True, "remat_policy": "dots_no_batch"}
  _, remat, _, _, _ = run_step(config, "image", make_mesh(), text_export)
  assert_same_update(remat, plain, before, rtol=1e-4)


def test_unknown_remat_policy_is_a_config_error(text_export):
  from aajax.errors import ConfigError
  config = tiny_config()
  config.stage_image.model = {"remat": True, "remat_policy": "everything"}
  with pytest.raises(ConfigError, match="remat_policy 'everything' unknown"):
    run_step(config, "image", make_mesh(jax.devices()[:1]), text_export)


def _per_device_fraction(tree, specs, mesh):
  """Share of `tree`'s bytes one device holds under `specs` (abstract shapes: nothing is allocated)."""
  own = whole = 0
  for x, spec in zip(jax.tree.leaves(tree), jax.tree.leaves(specs, is_leaf=lambda s: isinstance(s, jax.P))):
    shape = list(x.shape)
    for dim, axis in enumerate(spec):
      if axis is not None:
        shape[dim] //= mesh.shape[axis]
    own += int(np.prod(shape)) * x.dtype.itemsize
    whole += x.size * x.dtype.itemsize
  return own / whole


@pytest.mark.parametrize("spec", ["configs/aa_siglip.py:so400m", "configs/aa_clip.py"])
def test_full_size_towers_split_eight_ways(spec):
  """so400m and ViT-L/14-336 under fsdp:8 with the default rules: each device keeps ~1/8 of the
  frozen backbone, of the trainable adapters and of their Adam state."""
  import optax
  from aajax.anomaly import objectives, recipe
  from aajax.anomaly.model import init_params
  from aajax.train import sharding
  from aajax.train.config import load_config
  config = load_config(spec)
  cfg = recipe.aa_config(config.model)
  params = jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))
  frozen, trainable = objectives.split_params(params, "image")
  mesh, rules = make_mesh(spec="fsdp:8"), sharding.Rules()
  assert _per_device_fraction(frozen, sharding.tree_specs(rules, mesh, frozen), mesh) < 0.13
  state = sharding.state_specs(rules, mesh, trainable, optax.adam(1e-3))
  assert _per_device_fraction(trainable, state["params"], mesh) < 0.13
  opt = jax.eval_shape(optax.adam(1e-3).init, trainable)
  assert _per_device_fraction(opt, state["opt_state"], mesh) < 0.13
