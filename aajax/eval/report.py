"""Reports a person reads: per-class metric tables, heatmap strips, ROC / PR curves.

Tables: metrics.md, metrics.csv, metrics.json with one row per class and a mean row, values in
percent with two decimals (JSON keeps full precision, NaN as null). A metric that is undefined for
a class (one label only) prints "n/a" and is left out of that column's mean; the footnote says so
(AA-CLIP writes 0 there, which drags the mean down).

Strips: image | ground truth overlay | prediction heatmap overlay (jet, alpha 0.5), one PNG per
image, maps normalised with the class's min/max as the reference's visualiser does.
"""
import csv
import io
import json
import math
import os

import numpy as np
from PIL import Image

METRIC_ORDER = ("image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "pixel_ap",
                "pixel_f1_max", "pixel_aupro")


def _atomic_write(path: str, data: bytes) -> None:
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "wb") as f:
    f.write(data)
  os.replace(tmp, path)


def _columns(results):
  keys = []
  for row in results.values():
    keys += [k for k, v in row.items() if k not in keys and isinstance(v, (int, float))]
  ordered = [k for k in METRIC_ORDER if k in keys]
  return ordered + [k for k in keys if k not in ordered and not k.startswith("n_")]


def _defined(v):
  return v is not None and not (isinstance(v, float) and math.isnan(v))


def mean_row(results: dict, columns) -> dict:
  out = {}
  for c in columns:
    vals = [r[c] for r in results.values() if _defined(r.get(c))]
    out[c] = float(np.mean(vals)) if vals else math.nan
  return out


def _fmt(v):
  return f"{100 * v:.2f}" if _defined(v) else "n/a"


def write_tables(results: dict, outdir: str, title: str = "Anomaly detection metrics") -> dict:
  """results: {class: {metric: value in [0, 1]}} -> metrics.{md,csv,json} in outdir; returns paths."""
  os.makedirs(outdir, exist_ok=True)
  columns = _columns(results)
  mean = mean_row(results, columns)
  undefined = {c: [k for k, r in results.items() if not _defined(r.get(c))] for c in columns}
  undefined = {c: v for c, v in undefined.items() if v}

  lines = [f"# {title}", "", "| class | " + " | ".join(columns) + " |",
           "|---|" + "---:|" * len(columns)]
  for name, row in results.items():
    lines.append(f"| {name} | " + " | ".join(_fmt(row.get(c)) for c in columns) + " |")
  lines.append("| **mean** | " + " | ".join(f"**{_fmt(mean[c])}**" for c in columns) + " |")
  lines += ["", "Values in percent. Means are unweighted over classes (macro)."]
  for c, names in undefined.items():
    lines.append(f"- {c}: n/a for {', '.join(names)} (one label only, or nothing to score); "
                 "left out of the mean.")
  paths = {"md": os.path.join(outdir, "metrics.md"), "csv": os.path.join(outdir, "metrics.csv"),
           "json": os.path.join(outdir, "metrics.json")}
  _atomic_write(paths["md"], ("\n".join(lines) + "\n").encode())

  buf = io.StringIO()
  w = csv.writer(buf)
  w.writerow(["class"] + columns)
  for name, row in list(results.items()) + [("mean", mean)]:
    w.writerow([name] + [_fmt(row.get(c)) for c in columns])
  _atomic_write(paths["csv"], buf.getvalue().encode())

  def clean(v):
    if isinstance(v, (float, np.floating)):
      return None if math.isnan(v) else float(v)
    if isinstance(v, (np.integer,)):
      return int(v)
    return v
  doc = {"classes": {k: {m: clean(v) for m, v in r.items()} for k, r in results.items()},
         "mean": {m: clean(v) for m, v in mean.items()}, "undefined": undefined}
  _atomic_write(paths["json"], (json.dumps(doc, indent=1) + "\n").encode())
  return paths


# ---------------------------------------------------------------------------------------- heatmaps

def _jet(x):
  from matplotlib import colormaps
  return (colormaps["jet"](np.clip(x, 0, 1))[..., :3] * 255).astype(np.uint8)


def _overlay(image, colour, alpha=0.5):
  return np.round((1 - alpha) * image.astype(np.float32) + alpha * colour).astype(np.uint8)


def _resize_to(x, shape, resample):
  if x.shape[:2] == tuple(shape):
    return x
  return np.asarray(Image.fromarray(x).resize((shape[1], shape[0]), resample))


def heatmap_strip(image, mask, amap, vmin, vmax) -> np.ndarray:
  """uint8 [H, 3W, 3]: image | ground truth in red over the image | jet heatmap over the image."""
  image = np.asarray(image, np.uint8)
  h, w = image.shape[:2]
  mask = np.zeros((h, w), np.uint8) if mask is None else _resize_to(
      (np.asarray(mask) != 0).astype(np.uint8), (h, w), Image.NEAREST)
  amap = np.asarray(amap, np.float32)
  norm = (amap - vmin) / (vmax - vmin) if vmax > vmin else np.zeros_like(amap)
  norm = _resize_to(norm, (h, w), Image.BILINEAR)
  gt = image.copy()
  gt[mask > 0] = _overlay(image[mask > 0], np.asarray([255, 0, 0], np.float32))
  return np.concatenate([image, gt, _overlay(image, _jet(norm))], axis=1)


def save_heatmaps(images_uint8, masks, maps, names, outdir, vmin=None, vmax=None) -> list:
  """One PNG strip per image in outdir/<name>.png (name may contain '/': sub-folders).
  Maps are normalised with vmin/vmax, by default the min/max over all given maps (pass one
  class at a time to get the reference's per-class normalisation)."""
  maps = [np.asarray(m, np.float32) for m in maps]
  vmin = min(float(m.min()) for m in maps) if vmin is None else vmin
  vmax = max(float(m.max()) for m in maps) if vmax is None else vmax
  masks = [None] * len(maps) if masks is None else masks
  paths = []
  for image, mask, amap, name in zip(images_uint8, masks, maps, names):
    path = os.path.join(outdir, f"{name}.png")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    buf = io.BytesIO()
    Image.fromarray(heatmap_strip(image, mask, amap, vmin, vmax)).save(buf, format="PNG")
    _atomic_write(path, buf.getvalue())
    paths.append(path)
  return paths


# ------------------------------------------------------------------------------------------ curves

def plot_curves(curves: dict, outdir: str, prefix: str = "image") -> dict:
  """curves: {class: {"fpr", "tpr", "recall", "precision"}} (see metrics.curves) ->
  <prefix>_roc.png and <prefix>_pr.png, one line per class."""
  from matplotlib.figure import Figure   # no pyplot: no global state, no GUI backend

  os.makedirs(outdir, exist_ok=True)
  paths = {}
  for kind, (x, y, xl, yl) in {"roc": ("fpr", "tpr", "false positive rate", "true positive rate"),
                                "pr": ("recall", "precision", "recall", "precision")}.items():
    fig = Figure(figsize=(6, 5), dpi=100)
    ax = fig.subplots()
    for name, c in curves.items():
      ax.plot(c[x], c[y], lw=1.2, label=str(name))
    if kind == "roc":
      ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax.set(xlabel=xl, ylabel=yl, xlim=(0, 1), ylim=(0, 1.02), title=f"{prefix} {kind.upper()}")
    ax.legend(fontsize=7, loc="lower right" if kind == "roc" else "lower left")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    paths[kind] = os.path.join(outdir, f"{prefix}_{kind}.png")
    _atomic_write(paths[kind], buf.getvalue())
  return paths
