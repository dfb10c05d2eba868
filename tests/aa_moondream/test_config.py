"""configs/aa_moondream.py and the full-size layout (shapes only: nothing is allocated)."""
import os

import jax
import pytest

from aajax.aa_moondream import recipe
from aajax.aa_moondream.config import AAMoondreamConfig
from aajax.aa_moondream.model import init_params, split_params
from aajax.errors import ConfigError
from aajax.nn import lora
from aajax.train.config import load_config
from aajax.vlm.config import get_config
from aajax.vlm.model import init_params as md_init

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_moondream2_layout_and_trainable_sizes():
  c = load_config(os.path.join(ROOT, "configs/aa_moondream.py") + ":moondream2")
  assert c.data.name == "visa" and c.data.eval_name == "mvtec" and c.task == "aa_moondream"
  cfg = recipe.aa_config(c.model)
  assert cfg.levels == (7, 14, 21, 27) and cfg.image_adapt_until == 6 and cfg.image_size == 378 and cfg.grid == 27
  shapes = jax.eval_shape(lambda: init_params(cfg, jax.random.PRNGKey(0)))
  _, head = split_params(shapes)
  n_head = sum(x.size for x in jax.tree.leaves(head))
  # 6 adapters 1152^2 + 5 projections 1152 x 768 + anchors + 4 level weights + map weight: the seed's ~10 M
  assert n_head == 6 * 1152 ** 2 + 5 * 1152 * 768 + 768 * 2 + 4 + 1
  text = jax.eval_shape(lambda: md_init(cfg.moondream, jax.random.PRNGKey(0))["text"])
  adapters = jax.eval_shape(lambda: lora.init_lora(jax.random.PRNGKey(0), text, cfg.lora))
  # rank 8 on qkv (2048 -> 6144), fc1 (-> 8192) and fc2 of 24 blocks
  assert lora.count(adapters) == 24 * 8 * (2048 + 6144 + 2048 + 8192 + 8192 + 2048)


def test_demo_config_and_bad_settings():
  c = load_config(os.path.join(ROOT, "configs/aa_moondream.py"))
  cfg = recipe.aa_config(c.model)
  assert cfg.moondream.vision.enc_n_layers == 6 and cfg.grid == 16 and cfg.levels == (2, 3, 5, 6)
  with pytest.raises(ConfigError, match="levels"):
    AAMoondreamConfig(get_config("tiny"), levels=(3,), image_adapt_until=1)
  c.model.vision.enc_nonsense = 3
  with pytest.raises(ConfigError, match="model.vision"):
    recipe.aa_config(c.model)
  with pytest.raises(ValueError, match="unknown size"):
    load_config(os.path.join(ROOT, "configs/aa_moondream.py") + ":huge")


def test_qa_stage_without_the_anomaly_export_is_a_clear_error():
  from aajax.aa_moondream.tasks import AAMoondreamTask
  from aajax.train.stages import stage_config
  c = load_config(os.path.join(ROOT, "configs/aa_moondream.py"))
  c.data.classes = ("brick",)
  with pytest.raises(ConfigError, match="run stage 'anomaly' first"):
    AAMoondreamTask().init(jax.random.key(0), stage_config(c, "qa"))
