"""The release layouts of Moondream 2 and 0.5B, shapes only (nothing allocated): the converter's
names and shapes against the reference weight table, and the generation read from the shapes."""
import pytest

from aajax.errors import CheckpointError
from aajax.vlm.config import get_config
from weights_convert.moondream import LazyState, check_generation, expected_state_shapes, infer_config

# (md2 shape, md05 shape) of the reference table's rows that differ between the two
TABLE = {
    "vision.patch_emb.weight": ((1152, 588), (720, 588)),
    "vision.pos_emb": ((1, 729, 1152), (1, 729, 720)),
    "vision.blocks.26.attn.qkv.weight": ((3456, 1152), (2160, 720)),
    "vision.blocks.0.mlp.fc1.weight": ((4304, 1152), (2690, 720)),
    "vision.proj_mlp.fc1.weight": ((8192, 2304), (8192, 1440)),
    "vision.proj_mlp.fc2.weight": ((2048, 8192), (1024, 8192)),
    "text.wte": ((51200, 2048), (51200, 1024)),
    "text.blocks.23.attn.qkv.weight": ((6144, 2048), (3072, 1024)),
    "text.blocks.0.mlp.fc1.weight": ((8192, 2048), (4096, 1024)),
    "text.lm_head.weight": ((51200, 2048), (51200, 1024)),
    "region.coord_encoder.weight": ((2048, 256), (1024, 256)),
    "region.coord_decoder.fc1.weight": ((8192, 2048), (8192, 1024)),
    "region.size_encoder.weight": ((2048, 512), (1024, 512)),
    "region.coord_features": ((1, 128), (1, 128)),
    "region.size_features": ((2, 256), (2, 256)),
}


def shapes_only(shapes: dict) -> LazyState:
  return LazyState({k: (lambda: pytest.fail("a shape-only state was read")) for k in shapes}, shapes)


@pytest.mark.parametrize("name,column", [("moondream2", 0), ("moondream05", 1)])
def test_release_layout_matches_the_reference_table(name, column):
  cfg = get_config(name)
  shapes = expected_state_shapes(cfg)
  assert len(shapes) == 592   # 333 vision + 245 text + 14 region, both sizes
  for key, want in TABLE.items():
    assert shapes[key] == want[column], key
  state = shapes_only(shapes)
  assert infer_config(state) == cfg
  check_generation(state, cfg, "ckpt")


def test_a_0_5b_checkpoint_with_a_2b_config_is_refused():
  state = shapes_only(expected_state_shapes(get_config("moondream05")))
  with pytest.raises(CheckpointError, match="text width 1024"):
    check_generation(state, get_config("moondream2"), "ckpt")
