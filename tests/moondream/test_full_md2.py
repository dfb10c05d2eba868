"""Full-size Moondream 2: random init written in the real checkpoint names and shapes (bf16
safetensors), converted with the CLI, compared against the torch reference and transformers
PhiForCausalLM, and run end to end.

Memory: the params are held once (float32, ~7.7 GB); the references read zero-copy views of them.
On a shared machine, run the full tests one at a time, with nothing else memory-hungry alongside.
"""
import gc

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from aajax.decoder import kv_cache as kvc
from aajax.vlm.config import get_config
from aajax.vlm.runtime import image_embeddings, prepare_images
from tests.moondream import torch_reference as ref
from tests.moondream.full_helpers import assert_converted_exactly, close, converted, image_prefix_parity, run_all_tasks, state_views

pytestmark = pytest.mark.full


@pytest.fixture(scope="module")
def md2(tmp_path_factory):
  with converted(tmp_path_factory, get_config("moondream2"), "moondream2") as src_md:
    yield src_md


def test_md2_every_tensor_converted_exactly(md2):
  assert_converted_exactly(*md2, get_config("moondream2"))


def test_md2_vision_matches_reference(md2):
  _, md = md2
  cfg, vc = md.cfg, md.cfg.vision
  img = np.random.default_rng(0).integers(0, 255, (300, 420, 3), dtype=np.uint8)  # 1x1 tiling: 2 crops
  with jax.default_matmul_precision("highest"):
    got = image_embeddings(md.fns, md.params, [img])[0]
  crops, _, tilings = prepare_images([img], cfg)
  with torch.no_grad():
    want = ref.image_tokens(state_views(md.params, cfg), vc, torch.from_numpy(crops).permute(0, 3, 1, 2), tilings[0])
  close(got, want, 2e-4)


def test_md2_decoder_matches_phi(md2):
  """Prefill logits, every decode step's logits with the KV cache, and the greedy tokens."""
  from weights_convert.moondream_hf import phi_model
  _, md = md2
  tc = md.cfg.text
  hf = phi_model(state_views(md.params, md.cfg), tc)  # reads our params in place
  tokens = np.random.default_rng(1).integers(10, tc.vocab_size, (1, 24))
  n_new = 6
  with torch.no_grad():
    gen = hf.generate(torch.from_numpy(tokens), max_new_tokens=n_new, do_sample=False,
                      output_logits=True, return_dict_in_generate=True)
  steps, p = md.fns.steps, md.params["text"]
  with jax.default_matmul_precision("highest"):
    cache = kvc.init_cache(tc.n_layers, 1, 64, tc.n_kv_heads, tc.head_dim)
    out = steps.prefill(p, steps.embed(p, jnp.asarray(tokens, jnp.int32)), cache)
    got_logits, got_tokens = [out["logits"][0]], []
    tok, cache = jnp.argmax(out["logits"], -1).astype(jnp.int32), out["cache"]
    for _ in range(n_new - 1):
      got_tokens.append(int(tok[0]))
      out = steps.decode_tokens(p, tok, cache, jax.random.PRNGKey(0), 0.0, 1.0)
      tok, cache = out["tokens"], out["cache"]
      got_logits.append(out["logits"][0])
    got_tokens.append(int(tok[0]))
  for g, w in zip(got_logits, gen.logits):
    close(g, w[0], 2e-3)
  assert got_tokens == gen.sequences[0, 24:].tolist()
  del hf
  gc.collect()


def test_md2_image_prefix_and_decode_match_reference(md2):
  image_prefix_parity(md2[1], 2e-3)


def test_md2_end_to_end(md2):
  run_all_tasks(md2[1])
