"""HF export round trip, the embed demo end to end, and the bf16 compute policy."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers

from aajax.encoders.two_towers import TwoTowerModel
from launch import embed
from tests.encoders.parity import assert_close, hf_outputs, run_model
from tests.encoders.test_tiny_parity import TINY, random_inputs
from weights_convert.export_hf import save_hf_two_tower
from weights_convert.towers import example_inputs


def random_params(cfg, seed=0):
  params = jax.jit(TwoTowerModel(cfg).init)(jax.random.PRNGKey(seed), *example_inputs(cfg))["params"]
  # Non-trivial norms and biases, so a mix-up in the export shows.
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda x: np.asarray(x) + 0.1 * rng.standard_normal(x.shape).astype(np.float32), params)


@pytest.mark.parametrize("name", ["siglip", "clip"])
def test_hf_export_loads_in_transformers(name, tmp_path):
  cfg = TINY[name]
  params = random_params(cfg)
  save_hf_two_tower(cfg, params, str(tmp_path / "hf"))
  cls = transformers.SiglipModel if name == "siglip" else transformers.CLIPModel
  hf = cls.from_pretrained(str(tmp_path / "hf"), attn_implementation="eager").eval()
  images, ids = random_inputs(cfg)
  assert_close(run_model(TwoTowerModel(cfg), params, images, ids.astype(np.int32)), hf_outputs(hf, images, ids))


def test_demo_runs_end_to_end(tmp_path, capsys):
  assert embed.main(["--demo", "--workdir", str(tmp_path)]) == 0
  out = capsys.readouterr().out
  assert "a photo of a cat" in out and "chelsea.png" in out and "cosine similarity" in out
  # and the converted model embeds again through the plain CLI
  images = [str(tmp_path / "coffee.png"), str(tmp_path / "chelsea.png"), str(tmp_path / "astronaut.png")]
  assert embed.main(["--model", str(tmp_path / "model"), "--images", *images, "--texts", *embed.DEMO_TEXTS]) == 0


def test_embed_errors(tmp_path, capsys):
  assert embed.main(["--model", str(tmp_path / "none"), "--images", "x.png", "--texts", "a"]) == 2
  assert "model directory not found" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["siglip", "clip"])
def test_bf16_compute_keeps_fp32_params(name):
  """dtype="bfloat16": params stay float32, activations are bfloat16, embeddings close to fp32."""
  cfg = TINY[name]
  params = random_params(cfg)
  bf16 = TwoTowerModel(cfg.replace(dtype="bfloat16"))
  images, ids = random_inputs(cfg)
  init_shapes = jax.eval_shape(lambda: bf16.init(jax.random.PRNGKey(0), *example_inputs(cfg)))["params"]
  assert {x.dtype for x in jax.tree.leaves(init_shapes)} == {jnp.dtype("float32")}
  img = jax.jit(lambda p, x: bf16.apply({"params": p}, x, taps=(1,), method=TwoTowerModel.encode_image))(params, images)
  txt = jax.jit(lambda p, t: bf16.apply({"params": p}, t, taps=(1,), method=TwoTowerModel.encode_text))(params, ids.astype(np.int32))
  assert img["hidden"][1].dtype == jnp.bfloat16 and txt["hidden"][1].dtype == jnp.bfloat16
  ref = run_model(TwoTowerModel(cfg), params, images, ids.astype(np.int32), taps=False)
  for got, want in ((img["pooled"], ref["image"]), (txt["pooled"], ref["text"])):
    got, want = np.asarray(got, np.float32), np.asarray(want)
    cos = (got * want).sum(-1) / np.linalg.norm(got, axis=-1) / np.linalg.norm(want, axis=-1)
    assert cos.min() > 0.999, cos
    assert np.abs(got - want).max() / np.abs(want).max() < 3e-2
