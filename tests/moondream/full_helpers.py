"""Shared pieces of the full-size tests: random checkpoints in the real names, conversion, parity runs."""
import contextlib
import gc
import resource
import shutil
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
from PIL import Image

from aajax.decoder import kv_cache as kvc
from aajax.params import flatten
from aajax.vlm.moondream import Moondream
from aajax.vlm.runtime import image_embeddings
from tests.moondream import torch_reference as ref
from tests.moondream.helpers import write_tiny_tokenizer
from weights_convert import moondream as conv


def random_tensor(name, shape, gen):
  if name.endswith(("ln.weight", "ln1.weight", "ln2.weight")):
    t = 1.0 + 0.1 * torch.randn(shape, generator=gen)
  elif name.endswith(".bias"):
    t = 0.05 * torch.randn(shape, generator=gen)
  elif name.endswith("_features"):
    t = 3.0 * torch.randn(shape, generator=gen)
  elif name.endswith("tau.alpha"):
    t = torch.randn(shape, generator=gen)
  elif name in ("text.wte", "vision.pos_emb"):
    t = 0.5 * torch.randn(shape, generator=gen)
  else:  # torch layout: the input dim is last
    t = torch.randn(shape, generator=gen) * shape[-1] ** -0.5
  return t.to(torch.bfloat16)


def write_checkpoint(folder, cfg, seed=0):
  from safetensors.torch import save_file
  gen = torch.Generator().manual_seed(seed)
  state = {"model." + name: random_tensor(name, shape, gen) for name, shape in conv.expected_state_shapes(cfg).items()}
  save_file(state, str(folder / "model.safetensors"))
  write_tiny_tokenizer(str(folder / "tokenizer.json"))


@contextlib.contextmanager
def converted(tmp_path_factory, cfg, config_name):
  """Write a random checkpoint, convert it with the CLI, load it; yields (checkpoint dir, model).

  The converted copy is deleted once loaded (the params live in memory) and the checkpoint when the
  block ends: the full-size files are several GB each, and pytest otherwise keeps every module's
  temporary files on disk until the whole session ends."""
  t0 = time.time()
  src = tmp_path_factory.mktemp("ckpt")
  dst = tmp_path_factory.mktemp("conv") / "model"
  try:
    write_checkpoint(src, cfg)
    gc.collect()
    t1 = time.time()
    args = ["--src", str(src), "--dst", str(dst)] + (["--config", config_name] if config_name else [])
    assert conv.main(args) == 0
    gc.collect()
    t2 = time.time()
    md = Moondream.from_pretrained(str(dst))
    shutil.rmtree(dst.parent)
    print(f"random checkpoint {t1 - t0:.0f} s, conversion {t2 - t1:.0f} s, load {time.time() - t2:.0f} s, "
          f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.1f} GiB")
    yield src, md
    del md
  finally:
    shutil.rmtree(src, ignore_errors=True)
    shutil.rmtree(dst.parent, ignore_errors=True)
    gc.collect()


def assert_converted_exactly(src, md, cfg):
  """Every one of the 592 checkpoint tensors equals its converted parameter, bit for bit."""
  assert md.cfg == cfg
  views = state_views(md.params, md.cfg)
  lazy = conv.read_checkpoint(str(src))
  assert len(lazy) == len(views) == 592
  for key in lazy:
    np.testing.assert_array_equal(views[key[len("model."):]], lazy[key], err_msg=key)


def state_views(params, cfg):
  """Release-layout {name: zero-copy numpy view} of the params, for the torch references."""
  flat = flatten(params)
  return {name: conv.TRANSFORMS[tr][1](np.asarray(flat[path])) for path, name, tr in conv.moondream_rows(cfg)}


def close(a, b, tol):
  np.testing.assert_allclose(np.asarray(a), b.numpy() if isinstance(b, torch.Tensor) else b, rtol=tol, atol=tol)


def image_prefix_parity(md, tol):
  """JAX: vision -> image prefill (bidirectional prefix) -> prompt prefill -> 2 decode steps;
  torch reference: one full forward over the same 737 embeddings."""
  cfg = md.cfg
  img = np.random.default_rng(2).integers(0, 255, (200, 300, 3), dtype=np.uint8)
  prompt = [1, 15381, 2, 300, 301]
  nxt = [402, 403]
  tc, p, steps = cfg.text, md.params["text"], md.fns.steps
  with jax.default_matmul_precision("highest"):
    img_tok = image_embeddings(md.fns, md.params, [img])
    x = jnp.concatenate([steps.embed(p, jnp.asarray([[cfg.tokenizer.bos_id]], jnp.int32)), img_tok], axis=1)
    cache = kvc.init_cache(tc.n_layers, 1, cfg.prefix_len + 16, tc.n_kv_heads, tc.head_dim)
    cache = steps.prefill(p, x, cache, prefix_len=cfg.prefix_len)["cache"]  # what encode_image does
    out = steps.prefill(p, steps.embed(p, jnp.asarray([prompt], jnp.int32)), cache)
    got = [out["logits"][0]]
    cache = out["cache"]
    for t in nxt:
      out = steps.decode_tokens(p, jnp.asarray([t], jnp.int32), cache, jax.random.PRNGKey(0), 0.0, 1.0)
      cache = out["cache"]
      got.append(out["logits"][0])
  s = state_views(md.params, cfg)
  with torch.no_grad():
    seq = torch.cat([ref.embed(s, [cfg.tokenizer.bos_id]), torch.from_numpy(np.asarray(img_tok[0])),
                     ref.embed(s, prompt + nxt)])[None]
    h = ref.text_hidden(s, cfg.text, seq, cfg.prefix_len)
    want = ref.text_logits(s, h[0, -3:])
  for g, w in zip(got, want):
    close(g, w, tol)


def run_all_tasks(md):
  img = Image.fromarray(np.random.default_rng(3).integers(0, 255, (240, 320, 3), dtype=np.uint8))
  enc = md.encode_image(img)
  cap = md.caption(enc, length="short", temperature=0.0, max_tokens=3)
  ans = md.query(enc, "what is in the image?", max_tokens=3, logprobs=True)
  det = md.detect(enc, "cat", max_objects=2)
  pts = md.point(enc, "dog", max_objects=2)
  assert isinstance(cap["caption"], str) and isinstance(ans["answer"], str) and len(ans["logprobs"]) <= 3
  assert len(det["objects"]) <= 2 and len(pts["points"]) <= 2


