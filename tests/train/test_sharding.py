"""fsdp / expert sharding: the mesh spec, the per-leaf rule, and sharded steps equal replicated ones."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from aajax.errors import ConfigError
from aajax.train import loop, sharding, toy
from aajax.train.config import train_defaults
from aajax.train.mesh import make_mesh, parse_mesh, shard_batch, to_host
from tests.train.helpers import toy_config


def test_mesh_spec():
  assert parse_mesh("data:-1", 8) == {"data": 8, "expert": 1, "fsdp": 1}
  assert parse_mesh("data:2,fsdp:4", 8) == {"data": 2, "expert": 1, "fsdp": 4}
  assert parse_mesh("fsdp:-1", 8) == {"data": 1, "expert": 1, "fsdp": 8}
  assert parse_mesh("data:-1,expert:2,fsdp:2", 8) == {"data": 2, "expert": 2, "fsdp": 2}
  for bad, message in [("data:3", "3 devices but there are 8"), ("model:8", "unknown"), ("data:-1,fsdp:-1", "only one"),
                       ("data:2,fsdp:x", "not an integer"), ("fsdp:3,data:-1", "do not divide"), ("data:8,data:1", "twice")]:
    with pytest.raises(ConfigError, match=message):
      parse_mesh(bad, 8)
  mesh = make_mesh(spec="data:2,fsdp:4")
  assert mesh.axis_names == ("data", "expert", "fsdp") and mesh.devices.shape == (2, 1, 4)
  assert list(mesh.devices.flat) == jax.devices()   # each process's devices stay contiguous


def test_spec_rule():
  mesh = make_mesh(spec="data:1,expert:2,fsdp:4")
  rules = sharding.Rules(fsdp_min_size=64)
  spec = lambda name, shape: sharding.spec_for(rules, mesh, name, shape)
  assert spec("blocks_1/mlp/fc1", (8, 64, 128)) == jax.P("expert", None, "fsdp")   # expert dim, then largest
  assert spec("blocks_1/mlp/fc1/kernel", (64, 128)) == jax.P(None, "fsdp")         # a dense MLP: no expert dim
  assert spec("attn/qkv/kernel", (12, 12)) == jax.P("fsdp")                        # equal dims: the first
  assert spec("attn/qkv/kernel", (6, 30)) == jax.P()                               # nothing divisible by 4
  assert spec("ln/scale", (32,)) == jax.P()                                       # under fsdp_min_size
  assert spec("0/mu/blocks_1/mlp/fc2", (8, 64, 64)) == jax.P("expert", "fsdp")     # Adam's mu follows its param


def _step(config, mesh_spec, task=None, steps=1, **config_overrides):
  """`steps` train steps of a task on a mesh -> (params before, state after, last metrics, prepared)."""
  task = task or toy.ToyTask()
  config = ml_collections.ConfigDict(config.to_dict())
  config.update(config_overrides)
  config.stage = config.get("stage") or task.stages[0]
  mesh = make_mesh(spec=mesh_spec)
  prepared = loop.prepare(task, config, mesh)
  before = to_host(prepared.state["params"])
  step = prepared.train_step(task, config, donate=False)
  data = task.train_data(config, None)
  state = prepared.state
  for _ in range(steps):
    state, metrics = step(state, prepared.frozen, shard_batch(mesh, next(data), config.batch_size))
  return before, state, to_host(metrics), prepared


def _assert_same_update(a, b, before, rtol=1e-5):
  for x, y, x0 in zip(jax.tree.leaves(a), jax.tree.leaves(b), jax.tree.leaves(before)):
    scale = np.abs(y - x0).max()
    assert scale > 0   # the step moved every trainable tensor
    np.testing.assert_allclose(x - x0, y - x0, rtol=rtol, atol=rtol * scale)


def _sharded_leaves(tree):
  return [x for x in jax.tree.leaves(tree) if x.addressable_shards[0].data.shape != x.shape]


@pytest.mark.parametrize("mesh_spec", ["data:2,fsdp:4", "fsdp:8"])
def test_fsdp_step_equals_replicated(mesh_spec):
  # sgd shows a wrongly scaled gradient; noise exercises the per-device rng; two steps carry the
  # sharded optimizer state from one step to the next
  config = toy_config(batch_size=16, optimizer="sgd", momentum=0.9, lr=0.1, toy_noise=0.1, fsdp_min_size=0)
  before, ref, m_ref, _ = _step(config, "data:8", steps=2)
  _, got, m_got, prepared = _step(config, mesh_spec, steps=2)
  np.testing.assert_allclose(m_got["loss"], m_ref["loss"], rtol=1e-6)
  np.testing.assert_allclose(m_got["grad_norm"], m_ref["grad_norm"], rtol=1e-5)
  _assert_same_update(to_host(got["params"]), to_host(ref["params"]), before)
  # the layout really is sharded: trainable, optimizer state and frozen params
  specs = prepared.state_specs["params"]
  assert specs["hidden"]["kernel"] == jax.P("fsdp") and specs["head"]["bias"] == jax.P()
  assert got["params"]["hidden"]["kernel"].sharding.spec == jax.P("fsdp")
  assert len(_sharded_leaves(got["params"])) == 3 and len(_sharded_leaves(got["opt_state"])) == 3
  assert _sharded_leaves(prepared.frozen)   # the frozen embedding too


def test_fsdp_with_adam_clipping_and_accumulation():
  """Adam + global-norm clipping (the norm must add up every shard) + gradient accumulation."""
  config = toy_config(batch_size=32, lr=1e-2, grad_clip=0.05, fsdp_min_size=0)
  before, ref, m_ref, _ = _step(config, "data:8")
  _, got, m_got, _ = _step(config, "data:2,fsdp:4", accum=2)
  assert m_ref["grad_norm"] > 0.05   # clipping is active
  np.testing.assert_allclose(m_got["grad_norm"], m_ref["grad_norm"], rtol=1e-5)
  _assert_same_update(to_host(got["params"]), to_host(ref["params"]), before, rtol=1e-4)


def test_sharded_checkpoint_restores_replicated(tmp_path):
  """Written from an fsdp layout, resumed on a replicated one (and the reverse): the same run."""
  config = toy_config(steps=4, ckpt_every=2, log_every=2, fsdp_min_size=0)
  straight = loop.train(toy.ToyTask(), config, str(tmp_path / "straight"))
  loop.train(toy.ToyTask(), toy_config(**{**config, "steps": 2, "mesh": "fsdp:8"}), str(tmp_path / "moved"))
  resumed = loop.train(toy.ToyTask(), toy_config(**{**config, "mesh": "data:1"}), str(tmp_path / "moved"),
                       mesh=make_mesh(jax.devices()[:1]))
  for a, b in zip(jax.tree.leaves(to_host(straight.trainable)), jax.tree.leaves(to_host(resumed.trainable))):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


# -- a Moondream-3-style MoE decoder: expert weights split over the expert axis ---------------------

class MoeLmTask:
  """Next-token prediction with the MoE text decoder of aajax.decoder (embedding frozen)."""
  stages = ("lm",)

  def init(self, rng, config):
    import dataclasses
    from aajax.decoder.model import TextDecoder
    from aajax.vlm.config import tiny
    text = tiny(moe=True).text   # block 0 dense, block 1 MoE; dense dispatch compiles fastest
    self.model = TextDecoder(dataclasses.replace(text, n_layers=2, moe=dataclasses.replace(text.moe, dispatch="dense")))
    touch_all = lambda mod, x: (mod(x)["hidden"], mod.logits(x))   # __call__ alone skips the lm head
    params = self.model.init(rng, jnp.zeros((1, 4, self.model.cfg.dim)), method=touch_all)["params"]
    frozen = {"wte": params.pop("wte")}
    return frozen, params

  def loss_fn(self, trainable, frozen, batch, rng):
    from aajax.decoder.model import TextDecoder
    variables = {"params": {**frozen, **trainable}}
    out = self.model.apply(variables, self.model.apply(variables, batch["tokens"], method=TextDecoder.embed))
    logits = self.model.apply(variables, out["hidden"], method=TextDecoder.logits)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], batch["tokens"][:, 1:]).mean()
    return ce + 0.01 * out["aux_loss"], {"ce": ce, "aux": out["aux_loss"]}

  def train_data(self, config, start_state):
    rng = np.random.default_rng(0)
    return iter(lambda: {"tokens": rng.integers(0, 512, (config.batch_size, 12)).astype(np.int32)}, None)


@pytest.mark.parametrize("mesh_spec", ["data:1,expert:2,fsdp:4"])
def test_expert_axis_step_equals_replicated(mesh_spec):
  config = train_defaults()
  config.update(batch_size=8, optimizer="sgd", lr=0.5, fsdp_min_size=2 ** 10)
  before, ref, m_ref, _ = _step(config, "data:8", task=MoeLmTask())
  _, got, m_got, prepared = _step(config, mesh_spec, task=MoeLmTask())
  np.testing.assert_allclose(m_got["loss"], m_ref["loss"], rtol=1e-5)
  _assert_same_update(to_host(got["params"]), to_host(ref["params"]), before, rtol=1e-4)
  fc1 = got["params"]["blocks_1"]["mlp"]["fc1"]
  assert fc1.sharding.spec[0] == "expert" and fc1.addressable_shards[0].data.shape[0] == 8 // prepared.mesh.shape["expert"]
  assert "expert" not in prepared.state_specs["params"]["blocks_0"]["mlp"]["fc1"]["kernel"]   # the dense layer


def test_moondream3_experts_split_over_the_expert_axis():
  """The full Moondream 3 decoder (abstract shapes): on expert:8 each device keeps 1/8 of every
  expert weight; with expert:2,fsdp:4 the dense weights are split too."""
  from aajax.train.optim import path_names
  from aajax.vlm.config import moondream3
  from aajax.vlm.model import init_params
  params = jax.eval_shape(lambda: init_params(moondream3(), jax.random.key(0)))["text"]
  names = jax.tree.leaves(path_names(params))
  for spec, expected in (("data:1,expert:8", 1 / 8), ("data:1,expert:2,fsdp:4", 1 / 8)):
    mesh = make_mesh(spec=spec)
    specs = jax.tree.leaves(sharding.tree_specs(sharding.Rules(), mesh, params), is_leaf=lambda s: isinstance(s, jax.P))
    expert = [(x, s) for x, s, n in zip(jax.tree.leaves(params), specs, names) if n.endswith(("mlp/fc1", "mlp/fc2"))]
    assert len(expert) == 2 * (24 - moondream3().text.moe.start_layer)
    for x, s in expert:
      assert s[0] == "expert"
      assert np.prod(jax.sharding.NamedSharding(mesh, s).shard_shape(x.shape)) == x.size * expected
  attn = sharding.spec_for(sharding.Rules(), make_mesh(spec="data:1,expert:2,fsdp:4"), "blocks_0/attn/qkv/kernel", (2048, 6144))
  assert attn == jax.P(None, "fsdp")
