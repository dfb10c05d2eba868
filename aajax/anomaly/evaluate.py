"""Evaluate an AA model on a split: per-class pixel and image metrics, tables and heatmaps.

The protocol is the released `test.py` (see `aajax.anomaly.inference`): maps and detection scores
per image, one min-max normalisation per class, image scores by the class's domain rule. Pixel
metrics (AUROC, AP, AUPRO, F1-max) run over every pixel of the class at the model's input size;
image metrics (AUROC, AP, F1-max) over its images (`aajax.eval.evaluator.Evaluator`, which keeps
only the patch-grid maps and bit-packed masks, so a full test set fits in memory). A class whose
images all carry one label gets no image metrics (NaN, left out of the mean) instead of the
reference's silent 0.
"""
import os
import time

import numpy as np

from aajax.anomaly import inference, objectives
from aajax.anomaly.model import AAModel
from aajax.anomaly.prompts import prompt_ids


def anchors_for(model: AAModel, params, tokenizer, split, loader_factory, contexts_from=None):
  """[C, E, 2] anchors for the split's classes (in `split.class_names` order).

  With the stage-1 cross-attention variant each class's text attends to a prototype context: the
  mean context of `contexts_from` (a loader over that class's images; by default the split itself).
  """
  ids = prompt_ids(tokenizer, split.real_names)
  if not model.cfg.cross_attention:
    return objectives.anchor_table(model, params, ids)
  contexts = class_contexts(model, params, contexts_from or loader_factory(split.samples, split.class_names),
                            len(split.class_names))
  return objectives.anchor_table(model, params, ids, contexts)


def class_contexts(model: AAModel, params, loader, num_classes: int):
  """Mean stage-1 context per class over one pass of `loader` -> [C, N, E]."""
  context_fn = objectives.jit_stage1_context(model)
  sums, counts = None, np.zeros(num_classes)
  for batch in loader:
    valid = batch.get("valid", np.ones(len(batch["labels"]), bool))
    ctx = np.asarray(context_fn(params, batch["images"]))
    if sums is None:
      sums = np.zeros((num_classes,) + ctx.shape[1:], np.float64)
    for c, v, x in zip(batch["class_ids"], valid, ctx):
      if v:
        sums[c] += x
        counts[c] += 1
  if (counts == 0).any():
    raise ValueError("a class has no image to build its cross-attention context from")
  return (sums / counts[:, None, None]).astype(np.float32)


def evaluate(model, params, anchor_table, loader, domains, outdir: str, heatmaps_per_class: int = 4,
             progress=print) -> dict:
  """One pass over `loader`: per-class metrics, metrics.{md,csv,json}, heatmaps/ and curves/ in
  `outdir`; returns the mean row ({metric: value})."""
  fns = {d: inference.make_grid_fn(model, d) for d in set(domains)}
  predict = {d: (lambda fn: lambda images, class_ids: fn(params, anchor_table, images, class_ids))(fn)
             for d, fn in fns.items()}
  return evaluate_predictions(predict, model.cfg.image_size, loader, domains, outdir, heatmaps_per_class, progress)


def evaluate_predictions(predict: dict, image_size: int, loader, domains, outdir: str, heatmaps_per_class: int = 4,
                         progress=print) -> dict:
  """`evaluate` for any model: predict[domain](images, class_ids) -> (grid maps [B, g, g] already
  blurred for that domain, detection scores [B])."""
  from aajax.data.transforms import denormalize
  from aajax.eval import report
  from aajax.eval.evaluator import Evaluator
  evaluator = Evaluator(loader.class_names, domains, image_size)
  shown = {c: [] for c in range(len(loader.class_names))}   # (evaluator index, label, image, mask)
  start, seen = time.perf_counter(), 0
  for batch in loader:
    valid = np.asarray(batch.get("valid", np.ones(len(batch["labels"]), bool)))
    outs = {d: predict[d](batch["images"], batch["class_ids"]) for d in {domains[c] for c in batch["class_ids"]}}
    grid = np.stack([np.asarray(outs[domains[c]][0][i]) for i, c in enumerate(batch["class_ids"])])
    det = np.asarray([float(outs[domains[c]][1][i]) for i, c in enumerate(batch["class_ids"])])
    for i in np.flatnonzero(valid):
      _keep_for_heatmap(shown[int(batch["class_ids"][i])], heatmaps_per_class, seen + _rank(valid, i),
                        int(batch["labels"][i]), batch, i, loader.norm, denormalize)
    evaluator.add(batch["class_ids"], batch["labels"], grid, batch["masks"], det, valid,
                  batch.get("ids"))
    seen += int(valid.sum())
    if progress:
      progress(f"eval: {seen}/{len(loader.samples)} images, {seen / (time.perf_counter() - start):.1f} img/s")
  results = evaluator.results(curves=True)
  curves = {name: row.pop("curves") for name, row in results.items()}
  report.write_tables(results, outdir)
  for kind in ("image", "pixel"):
    report.plot_curves({k: v[kind] for k, v in curves.items()}, os.path.join(outdir, "curves"), kind)
  for c, kept in shown.items():
    if kept:
      kept = sorted(kept, key=lambda k: (-k[1], k[0]))[:heatmaps_per_class]
      idx = [k[0] for k in kept]
      report.save_heatmaps([k[2] for k in kept], [k[3] for k in kept], evaluator.normalized_maps(idx),
                           [f"{loader.class_names[c]}/{k[4]}" for k in kept], os.path.join(outdir, "heatmaps"),
                           vmin=0.0, vmax=1.0)
  columns = [k for k in next(iter(results.values())) if not k.startswith("n_")]
  return report.mean_row(results, columns)


def _rank(valid, i):
  """Index of row i among the valid rows of its batch."""
  return int(np.sum(valid[:i]))


def _keep_for_heatmap(kept, n, index, label, batch, i, norm, denormalize):
  """Keep up to n anomalous and n normal images per class; anomalous ones are shown first."""
  if sum(1 for k in kept if k[1] == label) >= n:
    return
  name = str(batch["ids"][i]).replace("/", "_") if "ids" in batch else str(index)
  kept.append((index, label, denormalize(batch["images"][i], norm), batch["masks"][i], name))
