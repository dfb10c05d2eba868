"""Memory and time of evaluating a MVTec-size test set: 1,725 images at 518 px in 15 classes
(~460 M pixels), patch-grid maps 37 x 37, all metrics (pixel AUROC / AP / F1-max / AUPRO, image
AUROC / AP / F1-max) exact.

Reports peak resident memory above the interpreter's baseline, wall and CPU time of the evaluation,
and the CPU time other processes used meanwhile (the machine is shared), and, for one class, the
time of scikit-learn's roc_auc_score on the same pixels as a reference point. JSON out.

  python -m benchmarks.eval_memory [--images 1725] [--size 518] [--out benchmarks/results/eval_memory.json]
"""
import argparse
import json
import os
import sys
import time

import numpy as np

from benchmarks import harness


def synthetic_batches(n_images, n_classes, size, grid, batch, seed=0):
  """Batches like a model's output: grid maps that score defects higher, masks with blobs."""
  rng = np.random.default_rng(seed)
  per_class = np.array_split(np.arange(n_images), n_classes)
  class_of = np.concatenate([[c] * len(p) for c, p in enumerate(per_class)])
  yy, xx = np.mgrid[0:size, 0:size]
  for s in range(0, n_images, batch):
    cls = class_of[s:s + batch]
    labels = (rng.random(len(cls)) < 0.73).astype(np.int32)   # MVTec test: 1,258 of 1,725
    masks = np.zeros((len(cls), size, size), np.uint8)
    maps = rng.normal(size=(len(cls), grid, grid)).astype(np.float32)
    for i in np.flatnonzero(labels):
      for _ in range(int(rng.integers(1, 4))):
        cy, cx = rng.integers(0, size, 2)
        r = rng.uniform(0.02, 0.12) * size
        masks[i][(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 1
        gy, gx = int(cy * grid / size), int(cx * grid / size)
        maps[i, max(gy - 1, 0):gy + 2, max(gx - 1, 0):gx + 2] += 1.5
    det = rng.normal(size=len(cls)) + labels
    yield cls, labels, maps, masks, det


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--images", type=int, default=1725)
  ap.add_argument("--classes", type=int, default=15)
  ap.add_argument("--size", type=int, default=518)
  ap.add_argument("--grid", type=int, default=37)
  ap.add_argument("--budget", type=int, default=None, help="pixels per sorted key range")
  ap.add_argument("--sklearn", action="store_true", help="also time sklearn on one class")
  ap.add_argument("--out", default="benchmarks/results/eval_memory.json")
  args = ap.parse_args(argv)

  from aajax.eval import metrics
  from aajax.eval.evaluator import Evaluator
  base = harness.rss_mib()
  budget = args.budget or metrics.DEFAULT_BUDGET
  ev = Evaluator([f"c{i}" for i in range(args.classes)], ["Industrial"] * args.classes, args.size,
                 budget=budget)
  busy0, own0, t0 = harness.machine_busy_s(), harness.own_cpu_s(), time.perf_counter()
  for cls, labels, maps, masks, det in synthetic_batches(args.images, args.classes, args.size,
                                                         args.grid, 32):
    ev.add(cls, labels, maps, masks, det)
  t_add = time.perf_counter() - t0
  held = harness.rss_mib() - base
  t1 = time.perf_counter()
  results = ev.results()
  t_metrics = time.perf_counter() - t1
  own = harness.own_cpu_s() - own0
  busy = harness.machine_busy_s() - busy0
  peak = harness.peak_mib() - base
  first = results["c0"]
  out = {
      "images": args.images, "classes": args.classes, "size": args.size, "grid": args.grid,
      "pixels": args.images * args.size * args.size, "budget_pixels": budget,
      "baseline_rss_mib": round(base, 1),
      "held_after_add_mib": round(held, 1),
      "peak_rss_above_baseline_mib": round(peak, 1),
      "add_s": round(t_add, 2), "metrics_s": round(t_metrics, 2),
      "cpu_s_self": round(own, 2), "cpu_s_other_processes": round(max(busy - own, 0.0), 2),
      "class_c0": {k: round(v, 6) for k, v in first.items() if isinstance(v, float)},
      "mean_pixel_auroc": float(np.mean([r["pixel_auroc"] for r in results.values()])),
  }
  if args.sklearn:
    from sklearn.metrics import roc_auc_score
    idx = ev.class_indices(0)
    full, mask = ev._full(idx), ev._mask(idx)
    t2 = time.perf_counter()
    ref = roc_auc_score(mask.ravel(), full.ravel())
    t_sk = time.perf_counter() - t2
    t3 = time.perf_counter()
    ours = metrics.pixel_metrics(mask, full, pro=False)["auroc"]
    t_ours = time.perf_counter() - t3
    out["one_class_pixels"] = int(full.size)
    out["one_class_sklearn_auroc_s"] = round(t_sk, 2)
    out["one_class_aajax_auroc_ap_f1_s"] = round(t_ours, 2)
    out["one_class_auroc_abs_diff"] = abs(ref - ours)
  os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
  tmp = args.out + ".tmp"
  with open(tmp, "w") as f:
    json.dump(out, f, indent=1)
  os.replace(tmp, args.out)
  json.dump(out, sys.stdout, indent=1)
  print()


if __name__ == "__main__":
  main()
