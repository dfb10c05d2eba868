"""The shipped AA configs resolve to the recipes they document (shapes only: nothing is allocated)."""
import pytest

from aajax.anomaly.model import init_shapes
from aajax.anomaly.recipe import aa_config
from aajax.errors import ConfigError
from aajax.train.config import apply_overrides, load_config
from aajax.train.stages import stage_config


@pytest.mark.parametrize("spec,size,levels,width", [
    ("configs/aa_clip.py", 518, (6, 12, 18, 24), 1024),
    ("configs/aa_siglip.py:so400m", 378, (7, 14, 21, 27), 1152),
    ("configs/aa_siglip.py", 128, (2, 3, 5, 6), 128),
])
def test_configs_resolve(spec, size, levels, width):
  config = load_config(spec)
  image = stage_config(config, "image")
  cfg = aa_config(image.model)
  assert (cfg.image_size, cfg.levels, cfg.backbone.vision.width) == (size, levels, width)
  shapes = init_shapes(cfg)
  assert shapes[("image_adapters_0", "fc", "kernel")] == (width, width)
  assert len([p for p in shapes if p[0].startswith("seg_proj_")]) == 4


def test_paper_recipe_numbers():
  c = load_config("configs/aa_clip.py")
  text, image = stage_config(c, "text"), stage_config(c, "image")
  assert (text.lr, text.batch_size, text.b1, text.b2) == (1e-5, 16, 0.5, 0.999)
  assert (image.lr, image.batch_size, image.schedule, tuple(image.milestones), image.gamma) == (
      5e-4, 2, "multistep", (16000, 32000), 0.5)
  assert image.model.remat and not text.model.remat
  assert (c.data.name, c.data.train_split, c.data.eval_name) == ("visa", "test", "mvtec")
  assert aa_config(image.model).cross_attention is False
  assert aa_config(stage_config(load_config("configs/aa_clip.py:bug_compat"), "text").model).dpam_mode == "vv_batch"


def test_unknown_keys_and_arguments_are_errors():
  with pytest.raises(ConfigError, match="model.tower.widht"):
    apply_overrides(load_config("configs/aa_siglip.py"), ["model.tower.widht=3"])
  with pytest.raises(Exception, match="unknown argument"):
    load_config("configs/aa_clip.py:huge")
