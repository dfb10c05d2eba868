"""`TextTransformer.sentence_embedding` (the last block run for the pooled token alone) against the
pooled output of the full tower: values and parameter gradients, both pooling rules, with remat."""
import dataclasses

import jax
import numpy as np
import pytest

from aajax.encoders.text import TextTransformer
from tests.encoders.test_tiny_parity import TINY, random_inputs


@pytest.mark.parametrize("remat", [False, True])
@pytest.mark.parametrize("name", ["siglip", "clip"])
def test_sentence_embedding_equals_the_full_towers_pooled_output(name, remat):
  cfg = TINY[name]
  text_cfg = dataclasses.replace(cfg.text, remat=remat)
  tower = TextTransformer(text_cfg)
  ids = random_inputs(cfg, batch=4)[1].astype(np.int32)   # CLIP: the EOT at a different place per row
  params = tower.init(jax.random.PRNGKey(0), ids)["params"]
  full = lambda p: tower.apply({"params": p}, ids)["pooled"]
  short = lambda p: tower.apply({"params": p}, ids, method=TextTransformer.sentence_embedding)
  with jax.default_matmul_precision("highest"):
    np.testing.assert_allclose(short(params), full(params), rtol=1e-5, atol=1e-6)
    weights = np.random.default_rng(1).standard_normal(full(params).shape).astype(np.float32)
    g_full = jax.grad(lambda p: (full(p) * weights).sum())(params)
    g_short = jax.grad(lambda p: (short(p) * weights).sum())(params)
  for path, a in jax.tree_util.tree_leaves_with_path(g_full):
    b = g_short
    for key in path:
      b = b[key.key]
    name = jax.tree_util.keystr(path)
    if "k_proj" in name and "bias" in name:   # softmax ignores a key bias: both are rounding noise
      assert np.abs(np.asarray(b)).max() < 1e-5 and np.abs(np.asarray(a)).max() < 1e-5, name
      continue
    scale = float(np.abs(np.asarray(a)).max())   # float32 sums cancel to ~1e-6 of their terms
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=2e-6 * scale, err_msg=name)
  # the gradient reaches the last block's MLP, which now sees one token per sentence
  assert np.abs(np.asarray(g_short["layers_1"]["mlp"]["fc1"]["kernel"])).max() > 1e-3
