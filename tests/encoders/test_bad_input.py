"""Model-level bad input: one short message each (converter bad input is in test_convert.py)."""
import json

import jax
import numpy as np
import pytest

from aajax.encoders.config import TwoTowerConfig, get_config
from aajax.encoders.two_towers import TwoTowerModel
from aajax.errors import CheckpointError, ConfigError, InputError
from aajax.model_dir import load_model
from tests.encoders.test_tiny_parity import TINY
from weights_convert.towers import example_inputs


def test_unknown_model_name():
  with pytest.raises(ConfigError, match="unknown model name 'siglip-huge'.*siglip-base-patch16-224"):
    get_config("siglip-huge")


def test_bad_config_dict():
  with pytest.raises(ConfigError, match="invalid two-tower config"):
    TwoTowerConfig.from_dict({"vision": {"widht": 3}, "text": {}})


def test_image_size_not_divisible_and_bad_taps():
  cfg = TINY["siglip"]
  model = TwoTowerModel(cfg)
  params = jax.jit(model.init)(jax.random.PRNGKey(0), *example_inputs(cfg))["params"]
  with pytest.raises(InputError, match="not divisible by the patch size 8"):
    model.apply({"params": params}, np.zeros((1, 36, 36, 3), np.float32), method=TwoTowerModel.encode_image)
  with pytest.raises(InputError, match="out of range"):
    model.apply({"params": params}, np.zeros((1, 32, 32, 3), np.float32), taps=(5,), method=TwoTowerModel.encode_image)
  with pytest.raises(InputError, match="token ids must be"):
    model.apply({"params": params}, np.zeros((1, 99), np.int32), method=TwoTowerModel.encode_text)


def test_broken_model_directories(tmp_path):
  with pytest.raises(CheckpointError, match="not found"):
    load_model(str(tmp_path / "none"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(CheckpointError, match="no config.json"):
    load_model(str(tmp_path / "empty"))
  (tmp_path / "half").mkdir()
  (tmp_path / "half" / "config.json").write_text(json.dumps({"kind": "two_tower", "config": TINY["clip"].to_dict()}))
  with pytest.raises(CheckpointError, match="no params/"):
    load_model(str(tmp_path / "half"))
  (tmp_path / "bad").mkdir()
  (tmp_path / "bad" / "config.json").write_text("{not json")
  with pytest.raises(CheckpointError, match="corrupt model config"):
    load_model(str(tmp_path / "bad"))
