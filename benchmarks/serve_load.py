"""Load test of the HTTP server: concurrent clients, latency percentiles, throughput, JSON out.

Modes, each a server on loopback in this process, driven by the same client load (`--requests`
chat completions with an image, `--concurrency` at a time, streaming, so the time to the first
token is measured too):
  batched     the JAX engine with continuous batching (--max-batch rows)
  unbatched   the same engine with max_batch 1 (one request at a time, as the reference serves)
  torch       the PyTorch reference computation (batch 1, KV cache) behind the same HTTP server,
              on the same random weights (dense Moondream configs only)
and the image cache: latency of a request whose image is new (vision + image prefill) against one
whose image is cached, one at a time.

  python -m benchmarks.serve_load --demo [--size small] [--requests 200] [--concurrency 16] [--max-tokens 16]
  python -m benchmarks.serve_load --model models/md2 --modes batched unbatched

Compilation is kept out of the figures: each mode first serves a warm-up burst at the same
concurrency (which compiles every batch width). The JSON records the CPU time other processes used
meanwhile (the figures are only comparable on a quiet machine).
"""
import argparse
import asyncio
import statistics
import sys
import time

import numpy as np

QUESTIONS = ["what is in the image?", "describe the picture", "how many birds are there",
             "what colour is the cat?"]


def percentile(values, q: float) -> float:
  return float(np.percentile(np.asarray(values, np.float64), q)) if values else float("nan")


async def _one(client, url: str, body: dict) -> dict:
  t0 = time.perf_counter()
  first, tokens, status, error = None, 0, 0, None
  try:
    async with client.stream("POST", url, json=body) as r:
      status = r.status_code
      if status != 200:
        error = (await r.aread()).decode(errors="replace")[:200]
      else:
        import json
        async for line in r.aiter_lines():
          if not line.startswith("data: ") or line == "data: [DONE]":
            continue
          chunk = json.loads(line[6:])
          if "error" in chunk:
            error = chunk["error"].get("message", "error")
            break
          if chunk.get("usage"):
            tokens = chunk["usage"]["completion_tokens"]
          for choice in chunk.get("choices", []):
            if choice["delta"].get("content") and first is None:
              first = time.perf_counter() - t0
  except Exception as e:  # noqa: BLE001 - a transport error counts as a failed request
    error = f"{type(e).__name__}: {e}"
  return {"latency_s": time.perf_counter() - t0, "ttft_s": first, "tokens": tokens, "status": status, "error": error}


async def run_load_async(base_url: str, model: str, images: list, n_requests: int, concurrency: int,
                         max_tokens: int, temperature: float = 0.0, timeout: float = 300.0) -> dict:
  """`n_requests` streamed chat completions, `concurrency` in flight; returns latency statistics."""
  import httpx
  url = base_url.rstrip("/") + "/v1/chat/completions"
  limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
  results, next_index = [], iter(range(n_requests))

  def body(i: int) -> dict:
    content = [{"type": "text", "text": QUESTIONS[i % len(QUESTIONS)]},
               {"type": "image_url", "image_url": {"url": images[i % len(images)]}}]
    return {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
            "temperature": temperature, "seed": i, "stream": True, "stream_options": {"include_usage": True}}

  async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
    async def worker():
      for i in next_index:
        results.append(await _one(client, url, body(i)))
    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - t0
  ok = [r for r in results if r["error"] is None]
  lat = [r["latency_s"] for r in ok]
  ttft = [r["ttft_s"] for r in ok if r["ttft_s"] is not None]
  tokens = sum(r["tokens"] for r in ok)
  return {"requests": n_requests, "concurrency": concurrency, "max_tokens": max_tokens, "errors": len(results) - len(ok),
          "error_samples": [r["error"] for r in results if r["error"] is not None][:3],
          "wall_s": wall, "throughput_rps": len(ok) / wall, "tokens_per_s": tokens / wall, "completion_tokens": tokens,
          "latency_p50_s": percentile(lat, 50), "latency_p95_s": percentile(lat, 95),
          "latency_p99_s": percentile(lat, 99), "latency_mean_s": statistics.fmean(lat) if lat else float("nan"),
          "ttft_p50_s": percentile(ttft, 50), "ttft_p95_s": percentile(ttft, 95)}


def run_load(*args, **kw) -> dict:
  return asyncio.run(run_load_async(*args, **kw))


def random_images(n: int, seed: int = 0, size=(96, 128)) -> list:
  from aajax.serve.images import data_url
  rng = np.random.default_rng(seed)
  return [data_url(rng.integers(0, 256, size + (3,), dtype=np.uint8)) for _ in range(n)]


def cache_latency(base_url: str, model: str, images: list, max_tokens: int = 1) -> dict:
  """One request at a time: each image once (a miss), then again (a hit). Medians."""
  import httpx

  def ask(img):
    body = {"model": model, "max_tokens": max_tokens, "temperature": 0,
            "messages": [{"role": "user", "content": [{"type": "text", "text": QUESTIONS[0]},
                                                      {"type": "image_url", "image_url": {"url": img}}]}]}
    t0 = time.perf_counter()
    r = client.post(base_url + "/v1/chat/completions", json=body)
    r.raise_for_status()
    return time.perf_counter() - t0
  with httpx.Client(timeout=300) as client:
    miss = [ask(img) for img in images]
    hit = [ask(img) for img in images]
  m, h = statistics.median(miss), statistics.median(hit)
  return {"images": len(images), "miss_median_s": m, "hit_median_s": h, "saved_s": m - h, "speedup": m / h}


def greedy_answers(base_url: str, model: str, images: list, max_tokens: int) -> list:
  """One greedy answer per image, one request at a time (to compare the modes' outputs)."""
  import httpx
  out = []
  with httpx.Client(timeout=300) as client:
    for i, img in enumerate(images):
      content = [{"type": "text", "text": QUESTIONS[i % len(QUESTIONS)]}, {"type": "image_url", "image_url": {"url": img}}]
      r = client.post(base_url + "/v1/chat/completions", json={"model": model, "max_tokens": max_tokens, "temperature": 0,
                                                               "messages": [{"role": "user", "content": content}]})
      r.raise_for_status()
      out.append(r.json()["choices"][0]["message"]["content"])
  return out


def _service(md, model_id, max_batch, engine=None, cache_mib=512):
  from aajax.serve.service import Service
  from aajax.serve.settings import ServeSettings
  settings = ServeSettings(max_batch=max_batch, cache_bytes=int(cache_mib * 2 ** 20), max_tokens_cap=4096,
                           request_timeout_s=3600, max_queue=100000)
  return Service(md, model_id, settings, engine=engine)


class CompileCounter:
  """Counts XLA compilations (jax_log_compiles messages) while active: a figure taken while the
  server compiles a new shape is not a steady-state figure."""

  def __init__(self):
    import logging
    self.count, self.handler = 0, logging.Handler()
    self.handler.emit = self._emit

  def _emit(self, record):
    if record.getMessage().startswith("Finished XLA compilation"):
      self.count += 1

  def __enter__(self):
    import logging

    import jax
    jax.config.update("jax_log_compiles", True)
    logging.getLogger("jax").addHandler(self.handler)
    return self

  def __exit__(self, *exc):
    import logging

    import jax
    logging.getLogger("jax").removeHandler(self.handler)
    jax.config.update("jax_log_compiles", False)


def run_mode(mode: str, md, model_id: str, args, images) -> dict:
  from aajax.serve.app import create_app
  from aajax.serve.live import serve_in_thread
  from benchmarks.harness import machine_busy_s, own_cpu_s
  engine = None
  if mode == "torch":
    from benchmarks.torch_serving import TorchEngine
    engine = TorchEngine.from_jax(md, args.threads)
  service = _service(md, model_id, 1 if mode == "unbatched" else args.max_batch, engine)
  t0 = time.perf_counter()
  service.warmup()  # compiles every batch width (JAX modes)
  compile_s = time.perf_counter() - t0
  try:
    with serve_in_thread(create_app(service)) as url:
      t0 = time.perf_counter()  # the same load once untimed: compiles any shape the warm-up missed
      warm = run_load(url, model_id, images, args.concurrency if mode == "torch" else args.requests, args.concurrency,
                      args.max_tokens)
      warm_s = time.perf_counter() - t0
      busy0, own0 = machine_busy_s(), own_cpu_s()
      with CompileCounter() as compiles:
        res = run_load(url, model_id, images, args.requests, args.concurrency, args.max_tokens)
      res["compiles_during_run"] = compiles.count
      res["other_cpu_s"] = round(max(0.0, (machine_busy_s() - busy0) - (own_cpu_s() - own0)), 3)
      res["compile_warmup_s"], res["burst_warmup_s"], res["warmup_errors"] = compile_s, warm_s, warm["errors"]
      stats = service.engine.stats()
      if stats.get("decode_steps"):
        res["mean_rows_per_decode_step"] = stats["batched_rows"] / stats["decode_steps"]
      res["answers"] = greedy_answers(url, model_id, images[:4], args.max_tokens)
      if mode == "batched" and args.cache_images:
        res["image_cache"] = cache_latency(url, model_id, random_images(args.cache_images, seed=99))
  finally:
    service.close()
  return res


def small_demo():
  """The tiny demo model with a wider, deeper decoder (dim 512, 6 layers: 19 M decoder params), where
  reading the weights dominates a decode step, as in real models."""
  import dataclasses
  from aajax.serve.service import demo_tokenizer
  from aajax.vlm.random_init import random_params
  from aajax.vlm.config import tiny
  from aajax.vlm.moondream import Moondream
  from aajax.vlm.tokenizer import MoondreamTokenizer
  base = tiny()
  cfg = base.replace(text=dataclasses.replace(base.text, dim=512, ff_dim=2048, n_layers=6, n_heads=8, n_kv_heads=8,
                                              rotary_dim=32),
                     vision=dataclasses.replace(base.vision, proj_out_dim=512),
                     region=dataclasses.replace(base.region, dim=512)).validate()
  return Moondream(cfg, random_params(cfg), MoondreamTokenizer(demo_tokenizer(cfg.text.vocab_size), cfg.tokenizer))


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  src = ap.add_mutually_exclusive_group(required=True)
  src.add_argument("--demo", action="store_true", help="the tiny random Moondream")
  src.add_argument("--model", help="a converted Moondream directory")
  ap.add_argument("--size", choices=["tiny", "small"], default="tiny", help="--demo model size")
  ap.add_argument("--threads", type=int, default=1,
                  help="CPU threads of XLA and torch (0: their defaults); 1 is fair on a small shared machine")
  ap.add_argument("--requests", type=int, default=200)
  ap.add_argument("--concurrency", type=int, default=16)
  ap.add_argument("--max-tokens", type=int, default=16)
  ap.add_argument("--max-batch", type=int, default=16)
  ap.add_argument("--images", type=int, default=8, help="distinct images in the load (the rest are cache hits)")
  ap.add_argument("--cache-images", type=int, default=5, help="images of the cache miss/hit measurement")
  ap.add_argument("--modes", nargs="+", default=["batched", "unbatched", "torch"],
                  choices=["batched", "unbatched", "torch"])
  ap.add_argument("--out", default="benchmarks/results/serve_load.json")
  args = ap.parse_args(argv)
  import logging
  import os
  if args.threads == 1:  # before JAX starts
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
  if args.threads:
    import torch
    torch.set_num_threads(args.threads)
  logging.getLogger("aajax.serve").setLevel(logging.WARNING)
  from aajax.serve.service import DEMO_MODEL_ID, demo_moondream
  from aajax.vlm.moondream import Moondream
  from benchmarks.harness import environment, write_json
  if args.demo:
    md = demo_moondream() if args.size == "tiny" else small_demo()
  else:
    md = Moondream.from_pretrained(args.model)
  model_id = DEMO_MODEL_ID if args.demo else "model"
  images = random_images(args.images)
  results = {}
  for mode in args.modes:
    print(f"{mode} ...", flush=True)
    results[mode] = run_mode(mode, md, model_id, args, images)
    r = results[mode]
    print(f"  {r['throughput_rps']:.2f} req/s, {r['tokens_per_s']:.1f} tok/s, p50 {r['latency_p50_s']:.3f} s, "
          f"p95 {r['latency_p95_s']:.3f} s, errors {r['errors']}", flush=True)
  summary = {}
  modes = list(results)
  summary["same_greedy_answers"] = all(results[m]["answers"] == results[modes[0]]["answers"] for m in modes)
  if "batched" in results and "unbatched" in results:
    summary["batched_vs_unbatched_throughput"] = results["batched"]["throughput_rps"] / results["unbatched"]["throughput_rps"]
  if "batched" in results and "torch" in results:
    summary["batched_vs_torch_throughput"] = results["batched"]["throughput_rps"] / results["torch"]["throughput_rps"]
  if "unbatched" in results and "torch" in results:
    summary["unbatched_vs_torch_throughput"] = results["unbatched"]["throughput_rps"] / results["torch"]["throughput_rps"]
  doc = {"model": f"{args.size} demo" if args.demo else args.model, "args": vars(args), "environment": environment(),
         "results": results, "summary": summary}
  write_json(args.out, doc)
  print(summary)
  return 0


if __name__ == "__main__":
  sys.exit(main())
