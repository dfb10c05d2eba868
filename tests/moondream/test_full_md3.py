"""Reduced-depth Moondream 3 at full width (4 dense + 2 MoE layers, tau, region LayerNorm heads):
random init in the real names (bf16), converted with the generation inferred from the tensors,
compared on one forward against the torch reference, and run end to end. ~1.7 B params, ~7 GB.
"""

import pytest

from aajax.vlm.config import moondream3
from tests.moondream.full_helpers import converted, image_prefix_parity, run_all_tasks

pytestmark = pytest.mark.full
MD3_LAYERS = 6  # 4 dense + 2 MoE layers: every kind of block at full width


@pytest.fixture(scope="module")
def md3(tmp_path_factory):
  cfg = moondream3(MD3_LAYERS).validate()
  with converted(tmp_path_factory, cfg, None) as (_, md):  # generation inferred from the tensors
    assert md.cfg == cfg
    yield md


def test_md3_reduced_forward_matches_reference(md3):
  image_prefix_parity(md3, 2e-3)


def test_md3_reduced_end_to_end(md3):
  run_all_tasks(md3)
