"""AA stages on the trainer: 8 devices == 1 device, frozen backbone without optimizer state, export chain."""
import jax
import ml_collections
import numpy as np
import pytest

from aajax.anomaly.tasks import AATask
from aajax.train import checkpoint, optim
from aajax.train.config import load_config
from aajax.train.mesh import make_mesh, replicate, shard_batch, to_host
from aajax.train.stages import stage_config
from aajax.train.step import init_train_state, make_train_step


def tiny_config(**stage_image):
  c = load_config("configs/aa_siglip.py")
  c.model.tower = ml_collections.ConfigDict(dict(family="siglip", width=32, depth=4, heads=2, mlp_dim=64, patch=8,
                                                 image_size=32, text_len=12, vocab=512))
  c.model.image_size = 32
  c.model.text_adapt_until = 1
  c.data.classes = ("brick", "coins")
  c.data.synthetic.update(image_size=32, n_train=8, n_test=4)
  c.batch_size = 8
  c.optimizer = "sgd"   # an n-times gradient would show (Adam is scale invariant)
  c.lr = 0.5
  c.stage_text = ml_collections.ConfigDict({"batch_size": 8})
  c.stage_image = ml_collections.ConfigDict({"batch_size": 8, **stage_image})
  return c


def one_step(config, stage, mesh, exports=None):
  sc = stage_config(config, stage, exports)
  task = AATask()
  frozen, trainable = task.init(jax.random.key(0), sc)
  tx = optim.from_config(sc)
  state = init_train_state(mesh, replicate(mesh, trainable), tx, jax.random.key(1))
  batch = next(task.train_data(sc, None))
  step = make_train_step(task.loss_fn, tx, mesh)
  new, metrics = step(state, replicate(mesh, frozen), shard_batch(mesh, batch, sc.batch_size))
  return to_host(trainable), to_host(new), to_host(metrics)


@pytest.fixture(scope="module")
def text_export(tmp_path_factory):
  config = tiny_config()
  _, state, _ = one_step(config, "text", make_mesh(jax.devices()[:1]))
  path = checkpoint.export_params(str(tmp_path_factory.mktemp("text")), state["params"])
  return {"text": path}


@pytest.mark.parametrize("stage", ["text", "image"])
def test_eight_devices_equal_one_device(stage, text_export):
  config = tiny_config()
  exports = text_export if stage == "image" else None
  before, s8, m8 = one_step(config, stage, make_mesh(), exports)
  _, s1, m1 = one_step(config, stage, make_mesh(jax.devices()[:1]), exports)
  np.testing.assert_allclose(m8["loss"], m1["loss"], rtol=2e-5)
  for a, b, c in zip(jax.tree.leaves(s8["params"]), jax.tree.leaves(s1["params"]), jax.tree.leaves(before)):
    u8, u1 = a - c, b - c   # compare the updates: float32 reduction order differs between the two meshes
    scale = np.abs(u1).max()
    assert scale > 0   # the step moved every trainable tensor: not a comparison of untouched trees
    np.testing.assert_allclose(u8, u1, rtol=1e-3, atol=2e-3 * scale)


def test_stage_groups_and_optimizer_state(text_export):
  config = tiny_config()
  config.optimizer = "adam"
  text = stage_config(config, "text")
  frozen, trainable = AATask().init(jax.random.key(0), text)
  assert sorted(trainable) == ["text_adapters_0", "text_proj"]
  assert "backbone" in frozen and "image_adapters_0" in frozen
  image = stage_config(config, "image", text_export)
  frozen, trainable = AATask().init(jax.random.key(0), image)
  assert sorted(trainable) == ["det_proj", "image_adapters_0", "seg_proj_0", "seg_proj_1", "seg_proj_2", "seg_proj_3"]
  assert frozen["anchors"].shape == (2, 32, 2)   # one (normal, abnormal) pair per training class
  # the text path is the exported stage-1 one, not a fresh init
  exported = checkpoint.load_exported(text_export["text"])
  np.testing.assert_array_equal(frozen["params"]["text_proj"]["fc"]["kernel"], exported["text_proj"]["fc"]["kernel"])
  tx = optim.from_config(image)
  n_trainable = sum(x.size for x in jax.tree.leaves(trainable))
  assert optim.state_size(tx.init(trainable)) == 2 * n_trainable   # Adam moments of the adapters only


def test_image_stage_without_text_export_is_a_clear_error():
  from aajax.errors import ConfigError
  with pytest.raises(ConfigError, match="run stage 'text' first"):
    AATask().init(jax.random.key(0), stage_config(tiny_config(), "image"))


def test_last_level_only_switch_backpropagates_only_the_last_level():
  config = tiny_config()
  sc = stage_config(config, "text")
  task = AATask()
  frozen, trainable = task.init(jax.random.key(0), sc)
  batch = next(task.train_data(sc, None))
  summed, m_sum = task.loss_fn(trainable, frozen, batch, None)
  sc.last_level_only = True
  last, m_last = task.loss_fn(trainable, frozen, batch, None)
  assert float(m_last["seg_loss"]) < float(m_sum["seg_loss"])
  assert float(m_sum["seg_loss"]) > 3 * float(m_last["seg_loss"])   # four levels summed


def test_cross_attention_variant_trains_both_stages(tmp_path):
  """Stage 1 trains text adapters + cross-attention (dropout on); stage 2 builds class prototypes."""
  config = tiny_config()
  config.model.cross_attention = True
  config.model.cross_attn_heads = 2
  mesh = make_mesh(jax.devices()[:1])
  before, state, metrics = one_step(config, "text", mesh)
  assert sorted(before) == ["cross_attn", "text_adapters_0", "text_proj"]
  assert np.isfinite(metrics["loss"])
  exports = {"text": checkpoint.export_params(str(tmp_path), state["params"])}
  _, _, metrics = one_step(config, "image", mesh, exports)
  assert np.isfinite(metrics["loss"])
