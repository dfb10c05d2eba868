"""A bounded load test on loopback: 200 streamed requests, 16 at a time, zero errors. The figures
(latency percentiles, throughput) are printed, never asserted."""
import json

from benchmarks.serve_load import random_images, run_load


def test_200_requests_16_concurrent_without_errors(live, record_property):
  before = live.engine.stats()
  res = run_load(live.url, live.service.model_id, random_images(4, seed=5), n_requests=200, concurrency=16,
                 max_tokens=8, temperature=0.7)
  after = live.engine.stats()
  figures = {k: round(v, 4) if isinstance(v, float) else v for k, v in res.items()}
  print("\nload:", json.dumps(figures))
  for key in ("latency_p50_s", "latency_p95_s", "throughput_rps", "tokens_per_s"):
    record_property(key, figures[key])  # in the junit XML (--junitxml) too
  assert res["errors"] == 0, res["error_samples"]
  assert after["finished"] - before["finished"] >= 200
  assert after["batched_rows"] - before["batched_rows"] > after["decode_steps"] - before["decode_steps"]
  assert after["image_cache"]["hits"] > before["image_cache"]["hits"]
  assert live.engine.active_rows() == 0
