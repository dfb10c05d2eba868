"""Full-size Moondream 0.5B: random init written in the release names and shapes (bf16 safetensors),
converted with the CLI without naming the config (the size is read from the shapes), every tensor
checked, the image prefix and decode steps against the torch reference, and every task end to end.

Memory: about 2 GB of float32 params, held once."""

import pytest

from aajax.vlm.config import get_config
from tests.moondream.full_helpers import assert_converted_exactly, converted, image_prefix_parity, run_all_tasks

pytestmark = pytest.mark.full


@pytest.fixture(scope="module")
def md05(tmp_path_factory):
  with converted(tmp_path_factory, get_config("moondream05"), None) as src_md:
    yield src_md


def test_md05_converted_exactly_from_its_shapes(md05):
  assert_converted_exactly(*md05, get_config("moondream05"))


def test_md05_image_prefix_and_decode_match_reference(md05):
  image_prefix_parity(md05[1], 2e-3)


def test_md05_end_to_end(md05):
  run_all_tasks(md05[1])
