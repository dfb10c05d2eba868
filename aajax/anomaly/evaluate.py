"""Evaluate an AA model on a split: per-class pixel and image metrics, tables and heatmaps.

The protocol is the released `test.py` (see `aajax.anomaly.inference`): maps and detection scores
per image, one min-max normalisation per class, image scores by the class's domain rule. Pixel
metrics (AUROC, AP, AUPRO, F1-max) run over every pixel of the class at the model's input size;
image metrics (AUROC, AP, F1-max) over its images. A class whose images all carry one label gets
no image metrics (NaN, left out of the mean) instead of the reference's silent 0.
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


def predict_split(model, params, anchor_table, loader, domains, progress=print):
  """One pass: maps, detection scores, masks, labels, class ids, uint8-ready images (per sample)."""
  from aajax.data.transforms import denormalize
  # The domain rule is applied per class later; the blur is the only per-domain step on the grid.
  fns = {}
  out = {k: [] for k in ("maps", "det", "masks", "labels", "class_ids", "images", "ids")}
  start, seen = time.perf_counter(), 0
  for batch in loader:
    valid = np.asarray(batch.get("valid", np.ones(len(batch["labels"]), bool)))
    batch_domains = [domains[c] for c in batch["class_ids"]]
    for domain in set(batch_domains):
      if domain not in fns:
        fns[domain] = inference.make_predict_fn(model, domain)
    maps = {d: fns[d](params, anchor_table, batch["images"], batch["class_ids"]) for d in set(batch_domains)}
    for i in np.flatnonzero(valid):
      m, det = maps[batch_domains[i]]
      out["maps"].append(np.asarray(m[i]))
      out["det"].append(float(det[i]))
      out["masks"].append(batch["masks"][i].astype(np.uint8))
      out["labels"].append(int(batch["labels"][i]))
      out["class_ids"].append(int(batch["class_ids"][i]))
      out["images"].append(denormalize(batch["images"][i], loader.norm))
      out["ids"].append(str(batch["ids"][i]) if "ids" in batch else str(seen + i))
    seen += int(valid.sum())
    if progress:
      rate = seen / max(time.perf_counter() - start, 1e-9)
      progress(f"eval: {seen}/{len(loader.samples)} images, {rate:.1f} img/s")
  return out


def evaluate(model, params, anchor_table, loader, domains, outdir: str, heatmaps_per_class: int = 4,
             progress=print):
  """Metrics per class and their mean; writes metrics.{md,csv,json}, heatmaps/ and curves/."""
  from aajax.eval import metrics, report
  pred = predict_split(model, params, anchor_table, loader, domains, progress)
  class_ids = np.asarray(pred["class_ids"])
  results = {}
  for c, name in enumerate(loader.class_names):
    idx = np.flatnonzero(class_ids == c)
    if not len(idx):
      continue
    maps = np.stack([pred["maps"][i] for i in idx])
    det = np.asarray([pred["det"][i] for i in idx])
    norm_maps, scores = inference.class_scores(maps, det, domains[c])
    masks = np.stack([pred["masks"][i] for i in idx])
    labels = np.asarray([pred["labels"][i] for i in idx])
    row = {**{f"pixel_{k}": v for k, v in metrics.pixel_metrics(masks, norm_maps).items()},
           **{f"image_{k}": v for k, v in metrics.image_metrics(labels, scores).items()}}
    results[name] = row
    shown = _heatmap_choice(labels, heatmaps_per_class)
    report.save_heatmaps([pred["images"][idx[i]] for i in shown], masks[shown], norm_maps[shown],
                         [f"{name}_{pred['ids'][idx[i]].replace('/', '_')}" for i in shown],
                         os.path.join(outdir, "heatmaps"))
  summary = report.write_tables(results, outdir)
  return summary


def _heatmap_choice(labels, n):
  """Anomalous images first (they show the most), then normal ones."""
  order = np.concatenate([np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)])
  return order[:n]

