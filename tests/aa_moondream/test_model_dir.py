"""An exported AA-Moondream directory through the generic model-dir loader (kind "aa_moondream") and
through `exported.load_model`; a directory of another kind gives a clear error."""
import jax
import numpy as np
import pytest

from aajax import model_dir
from aajax.aa_moondream import exported
from aajax.aa_moondream.model import AAMoondream
from aajax.aa_moondream.tokenizer import demo_tokenizer
from aajax.errors import CheckpointError
from aajax.nn import lora
from tests.aa_moondream.helpers import tiny_params


@pytest.fixture(scope="module")
def exported_dir(tmp_path_factory):
  cfg, md, head = tiny_params()
  ab = lora.init_lora(jax.random.PRNGKey(0), md["text"], cfg.lora)
  path = str(tmp_path_factory.mktemp("aamd") / "model")
  tok = demo_tokenizer(cfg.moondream.text.vocab_size, cfg.moondream.tokenizer)
  exported.write_model(path, cfg, {"init": "", "seed": 0}, md, head, ab, tok, {"kind": "head"},
                       {"max_boxes": 3, "map_threshold": 0.5})
  return path, cfg, md, head, ab


def test_generic_loader_gives_the_module_and_stored_params(exported_dir):
  path, cfg, md, head, ab = exported_dir
  module, params = model_dir.load_model(path, expect_kind="aa_moondream")
  assert isinstance(module, AAMoondream) and module.cfg == cfg
  assert sorted(params) == ["head", "lora", "moondream"]
  jax.tree.map(np.testing.assert_array_equal, params["head"], jax.tree.map(np.asarray, head))
  x = np.zeros((1, cfg.image_size, cfg.image_size, 3), np.float32)
  out = module.apply({"params": {**params["head"], "vision": params["moondream"]["vision"]}}, x)
  assert out["fused_logits"].shape == (1, cfg.grid ** 2, 2)


def test_exported_loader_resolves_base_and_tokenizer(exported_dir):
  path, cfg, md, _, ab = exported_dir
  trained = exported.load_model(path)
  assert trained.cfg == cfg and trained.source == {"kind": "head"}
  jax.tree.map(np.testing.assert_array_equal, trained.lora, jax.tree.map(np.asarray, ab))
  np.testing.assert_array_equal(trained.moondream["vision"]["patch_emb"]["kernel"],
                                md["vision"]["patch_emb"]["kernel"])
  assert trained.tokenizer.encode("defect")


def test_mismatched_kind_is_a_clear_error(exported_dir, tmp_path):
  path, cfg, md, *_ = exported_dir
  with pytest.raises(CheckpointError, match="holds a 'aa_moondream' model, expected 'moondream'"):
    model_dir.load_model(path, expect_kind="moondream")
  other = str(tmp_path / "md")
  model_dir.save_model(other, "moondream", cfg.moondream.to_dict(), {"vision": md["vision"]})
  with pytest.raises(CheckpointError, match="holds a 'moondream' model, expected an AA-Moondream model"):
    exported.load_model(other)
  model_dir.save_model(str(tmp_path / "bad"), "aa_moondream", {"base": {}}, {"head": {}})
  with pytest.raises(CheckpointError, match="lacks"):
    model_dir.load_model(str(tmp_path / "bad"))
