"""The benchmarks' torch serving reference answers what the JAX model answers: greedy text, detect
and point (so the load benchmark compares equal work), and runs jobs on its engine thread."""
import jax
import numpy as np
import pytest
from PIL import Image

from aajax.serve import engine as E
from aajax.serve.images import RequestImage
from aajax.vlm import moondream as api
from aajax.vlm.moondream import Moondream
from aajax.vlm.tokenizer import MoondreamTokenizer
from benchmarks.torch_serving import TorchEngine, TorchMoondream
from tests.moondream.helpers import tiny_model, write_tiny_tokenizer


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  """The tiny Moondream with its EOS logit biased down (the random model then emits objects
  until max_objects), as JAX params and as the torch reference."""
  cfg, params, state = tiny_model("tiny")
  bias = state["text.lm_head.bias"].copy()
  bias[cfg.tokenizer.eos_id] = -50.0
  state = {**state, "text.lm_head.bias": bias}
  params = jax.tree.map(lambda a: a, params)
  params["text"]["lm_head"]["bias"] = bias
  tok_path = write_tiny_tokenizer(str(tmp_path_factory.mktemp("tok") / "tokenizer.json"))
  md = Moondream(cfg, params, MoondreamTokenizer.from_file(tok_path, cfg.tokenizer))
  engine = TorchEngine(TorchMoondream(state, cfg), cfg.text.max_context)
  yield cfg, params, md, engine
  engine.close()


def pixels(seed):
  return np.random.default_rng(seed).integers(0, 255, (60, 80, 3), dtype=np.uint8)


@pytest.mark.parametrize("task", ["detect", "point"])
def test_points_equal_the_jax_loop(models, task):
  cfg, params, md, engine = models
  tok = md.tokenizer
  img = pixels(6)
  with jax.default_matmul_precision("highest"):
    want = getattr(api, task)(md.fns, params, tok, [Image.fromarray(img)], "cat", 3)[0]
  want = want["objects" if task == "detect" else "points"]
  req = E.PointsRequest(RequestImage(img, "img6"), tok.object_prompt(task, "cat"), task == "detect", 3)
  got = engine.submit_points(req).result(timeout=120)
  assert len(got) == len(want) == 3
  for g, w in zip(got, want):
    assert set(g) == set(w)
    np.testing.assert_allclose([g[k] for k in sorted(g)], [w[k] for k in sorted(w)], rtol=1e-5, atol=1e-6)
  assert engine.image_cache.stats()["misses"] >= 1


def test_jobs_run_on_the_engine_thread_and_report_errors(models):
  *_, engine = models
  assert engine.run_job(lambda: 41 + 1).result(timeout=30) == 42
  with pytest.raises(ZeroDivisionError):
    engine.run_job(lambda: 1 / 0).result(timeout=30)
  assert engine.alive
