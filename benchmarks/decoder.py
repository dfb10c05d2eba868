"""Moondream decoder and vision speed: JAX against PyTorch on the same random weights, same run.

Phases (each: compile time apart, then the median of --runs timed runs):
  vision   image encoding of --images images of 2 crops (378 px): ours vs transformers
           `SiglipVisionModel` of the same shape (so400m/14, no head; Moondream's tower is that ViT)
  prefill  BOS + 729 image tokens + a --prompt token prompt at each --prefill_batch: ours (prefix-LM
           mask, KV cache written) vs transformers `PhiForCausalLM` with its cache
  decode   --tokens greedy steps at each --batch, every row continuing the same prefilled prefix
           (the cache repeated), the host reading each step's tokens; tokens/s
The two implementations run in separate subprocesses one after the other (so each one's peak
memory is its own). Timing is `benchmarks.harness.measure` (first call apart, median, the CPU time
other processes used meanwhile and a `contended` flag per phase).

  python -m benchmarks.decoder [--config moondream2] [--batch 1 8] [--prefill_batch 1 8] [--tokens 32] [--runs 3]
                               [--out benchmarks/results/decoder.json]
"""
import argparse
import json
import subprocess
import sys
import time

import numpy as np

from benchmarks import harness


def random_state(cfg, seed=0):
  """Release-layout float32 (name, tensor) pairs, one at a time (vision + text; region not timed)."""
  import torch
  from weights_convert.moondream import expected_state_shapes
  gen = torch.Generator().manual_seed(seed)
  for name, shape in expected_state_shapes(cfg).items():
    if name.startswith("region."):
      continue
    if name.endswith(".bias") or name.endswith("_features"):
      t = 0.02 * torch.randn(shape, generator=gen)
    elif name.endswith("ln.weight") or name.endswith(("ln1.weight", "ln2.weight")):
      t = 1.0 + 0.1 * torch.randn(shape, generator=gen)
    else:
      t = torch.randn(shape, generator=gen) * shape[-1] ** -0.5
    yield name, t.numpy()


# -- ours -----------------------------------------------------------------------------------------
def run_jax(cfg, args):
  import jax
  import jax.numpy as jnp
  from aajax.decoder import kv_cache as kvc
  from aajax.vlm.runtime import MoondreamFns
  from aajax.params import unflatten
  from weights_convert.moondream import TRANSFORMS, moondream_rows
  rows = {name: (path, tr) for path, name, tr in moondream_rows(cfg)}
  flat = {}
  for name, value in random_state(cfg, args.seed):  # straight to the device: one host tensor at a time
    path, tr = rows[name]
    flat[path] = jax.device_put(np.ascontiguousarray(TRANSFORMS[tr][0](value)))
  params = unflatten(flat)
  fns, tc, res = MoondreamFns(cfg), cfg.text, {"device": str(jax.devices()[0])}
  v = cfg.vision
  crops = np.random.default_rng(0).uniform(-1, 1, (2 * args.images, v.crop_size, v.crop_size, 3)).astype(np.float32)
  res["vision"] = harness.measure(lambda: fns.encode_crops(params["vision"], crops).block_until_ready(), args.runs)
  steps, p = fns.steps, params["text"]
  t = cfg.prefix_len + args.prompt
  size = t + args.tokens
  x = jnp.asarray(np.random.default_rng(1).standard_normal((max(args.prefill_batch), t, tc.dim)), jnp.float32)

  def prefill(b):
    cache = kvc.init_cache(tc.n_layers, b, size, tc.n_kv_heads, tc.head_dim)
    return steps.prefill(p, x[:b], cache, prefix_len=cfg.prefix_len)
  for b in args.prefill_batch:
    res[f"prefill_b{b}"] = harness.measure(lambda: prefill(b)["logits"].block_until_ready(), args.runs)
  first = prefill(1)
  key = jax.random.PRNGKey(0)
  for b in args.batch:  # decode rows start from the same prefilled prefix
    def decode():
      cache = kvc.repeat_cache(first["cache"], b)
      tok = jnp.repeat(jnp.argmax(first["logits"], -1).astype(jnp.int32), b)
      for _ in range(args.tokens):
        out = steps.decode_tokens(p, tok, cache, key, 0.0, 1.0)
        cache, tok = out["cache"], out["tokens"]
        np.asarray(tok)  # the host reads each token, as generation does
    res[f"decode_b{b}"] = harness.measure(decode, max(1, args.runs - 1))
  return res


# -- reference ------------------------------------------------------------------------------------
def run_torch(cfg, args):
  import torch
  from transformers import DynamicCache
  from weights_convert.moondream_hf import phi_model, siglip_vision_model
  torch.set_grad_enabled(False)
  state = {k: torch.from_numpy(v) for k, v in random_state(cfg, args.seed)}
  tc, v, res = cfg.text, cfg.vision, {"device": "cpu", "threads": torch.get_num_threads()}
  vision = siglip_vision_model(state, v)
  crops = torch.from_numpy(np.random.default_rng(0).uniform(-1, 1, (2 * args.images, 3, v.crop_size, v.crop_size))
                           .astype(np.float32))
  res["vision"] = harness.measure(lambda: vision(pixel_values=crops), args.runs)
  del vision
  phi = phi_model(state, tc)
  hf_cfg = phi.config
  t = cfg.prefix_len + args.prompt
  x = torch.from_numpy(np.random.default_rng(1).standard_normal((max(args.prefill_batch), t, tc.dim)).astype(np.float32))

  def prefill(b):
    out = phi(inputs_embeds=x[:b], past_key_values=DynamicCache(config=hf_cfg), use_cache=True, logits_to_keep=1)
    return out.logits[:, -1], out.past_key_values
  for b in args.prefill_batch:
    res[f"prefill_b{b}"] = harness.measure(lambda: prefill(b), args.runs)
  logits, cache0 = prefill(1)
  for b in args.batch:
    def decode():
      import copy
      cache = copy.deepcopy(cache0)
      cache.batch_repeat_interleave(b)
      tok = logits.argmax(-1, keepdim=True).repeat_interleave(b, 0)
      for _ in range(args.tokens):
        out = phi(input_ids=tok, past_key_values=cache, use_cache=True)
        cache, tok = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
        tok.numpy()
    res[f"decode_b{b}"] = harness.measure(decode, max(1, args.runs - 1))
  return res


def bench_config(args):
  """The named config, optionally with fewer layers (same widths) for a quick, smaller run."""
  import dataclasses
  from aajax.vlm.config import get_config
  cfg = get_config(args.config)
  if args.layers:
    cfg = cfg.replace(text=dataclasses.replace(cfg.text, n_layers=args.layers))
  if args.vision_layers:
    cfg = cfg.replace(vision=dataclasses.replace(cfg.vision, enc_n_layers=args.vision_layers))
  return cfg


def one_impl(args):
  cfg = bench_config(args)
  busy0, own0, t0 = harness.machine_busy_s(), harness.own_cpu_s(), time.time()
  res = (run_jax if args.impl == "jax" else run_torch)(cfg, args)
  res["peak_rss_mib"] = harness.peak_mib()
  res["wall_s"] = time.time() - t0
  res["other_processes_cpu_s"] = max(0.0, (harness.machine_busy_s() - busy0) - (harness.own_cpu_s() - own0))
  json.dump(res, sys.stdout)


def summarise(results, args):
  rows = {}
  ours, ref = results["jax"], results["torch"]
  for key in ours:
    if isinstance(ours[key], dict) and "median_s" in ours[key]:
      j, t = ours[key], ref[key]
      m_j, m_t = j["median_s"], t["median_s"]
      row = {"jax_s": m_j, "torch_s": m_t, "jax_first_call_s": j["first_s"], "torch_first_call_s": t["first_s"],
             "speedup": m_t / m_j, "contended": j["contended"] or t["contended"]}
      if key.startswith("decode_b"):
        b = int(key[len("decode_b"):])
        row["jax_tokens_per_s"] = b * args.tokens / m_j
        row["torch_tokens_per_s"] = b * args.tokens / m_t
      rows[key] = row
  return rows


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--config", default="moondream2")
  ap.add_argument("--batch", type=int, nargs="+", default=[1, 8], help="decode batch sizes")
  ap.add_argument("--prefill_batch", type=int, nargs="+", default=[1, 8])
  ap.add_argument("--images", type=int, default=1, help="images of 2 crops in the vision phase")
  ap.add_argument("--prompt", type=int, default=16, help="prompt tokens after the 730 image prefix")
  ap.add_argument("--tokens", type=int, default=32, help="decode steps")
  ap.add_argument("--runs", type=int, default=3)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--layers", type=int, default=None, help="text layers (default: the config's)")
  ap.add_argument("--vision_layers", type=int, default=None, help="vision layers (default: the config's)")
  ap.add_argument("--impl", choices=["jax", "torch"], default=None, help=argparse.SUPPRESS)
  ap.add_argument("--out", default="benchmarks/results/decoder.json")
  args = ap.parse_args(argv)
  if args.impl:
    return one_impl(args)
  results = {}
  for impl in ("jax", "torch"):
    cmd = [sys.executable, "-m", "benchmarks.decoder", "--impl", impl] + (argv if argv is not None else sys.argv[1:])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
      sys.stderr.write(proc.stderr)
      raise SystemExit(f"{impl} run failed")
    results[impl] = json.loads(proc.stdout.strip().splitlines()[-1])
  report = {"config": args.config, "args": {k: v for k, v in vars(args).items() if k not in ("impl", "out")},
            "environment": harness.environment(), "raw": results, "summary": summarise(results, args)}
  harness.write_json(args.out, report)
  print(json.dumps(report["summary"], indent=2))
  return 0


if __name__ == "__main__":
  sys.exit(main())
