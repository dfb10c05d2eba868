"""Metrics report, heatmaps and curves for a data set: `python -m launch.report --outdir=<dir>`.

    python -m launch.report --outdir=runs/report                        # synthetic set, baseline scorer
    python -m launch.report --data=mvtec --root=/data/mvtec --outdir=runs/mvtec --maps=maps.npz

Maps come from --maps (an .npz with "ids" [N] and "maps" [N, h, w] -- patch grid or full size --
and optionally "det_scores" [N], e.g. written by an evaluation run), or, without it, from the
colour-statistics baseline fitted on the normal images of --fit_split. Writes metrics.md/.csv/.json,
heatmaps/<class>/<name>.png strips (image | ground truth | heatmap) and curves/*.png.
"""
import os
import sys

import numpy as np
from absl import app, flags

from aajax.errors import AajaxError, DataError

FLAGS = flags.FLAGS


def define_flags():
  """The command line flags; defined when run as a program, so launch modules import side by side."""
  flags.DEFINE_string("data", "synthetic", "data set name (aajax.data.datasets.DATASETS)")
  flags.DEFINE_string("root", None, "data set root folder (not needed for synthetic)")
  flags.DEFINE_string("split", "test", "split to evaluate")
  flags.DEFINE_string("fit_split", "train", "split whose normal images fit the baseline scorer")
  flags.DEFINE_list("classes", None, "classes to evaluate (default: all)")
  flags.DEFINE_integer("image_size", 256, "evaluation resolution (maps and masks)")
  flags.DEFINE_string("maps", None, ".npz with ids, maps and optional det_scores")
  flags.DEFINE_integer("heatmaps_per_class", 6, "heatmap strips per class (anomalous first)")
  flags.DEFINE_string("outdir", None, "output folder")
  flags.mark_flag_as_required("outdir")


def _load_maps(path, samples):
  if not os.path.isfile(path):
    raise DataError(f"maps file {path} not found")
  with np.load(path, allow_pickle=False) as z:
    if "ids" not in z or "maps" not in z:
      raise DataError(f"{path} must hold arrays 'ids' and 'maps' (and optionally 'det_scores')")
    ids, maps = [str(i) for i in z["ids"]], z["maps"]
    det = z["det_scores"] if "det_scores" in z else None
  index = {i: n for n, i in enumerate(ids)}
  missing = [s.id for s in samples if s.id not in index]
  if missing:
    raise DataError(f"{path} has no map for {len(missing)} samples, e.g. {missing[0]!r}")
  rows = [index[s.id] for s in samples]
  return maps[rows], (None if det is None else det[rows])


def run(data, root, split, classes, image_size, outdir, maps_path=None, fit_split="train",
        heatmaps_per_class=6):
  from aajax.data import class_names as names
  from aajax.data import transforms
  from aajax.data.datasets import load_samples
  from aajax.eval import report
  from aajax.eval.evaluator import Evaluator
  from aajax.eval.color_baseline import ColorBaseline

  samples = load_samples(data, root, split, classes)
  class_list = list(dict.fromkeys(s.class_name for s in samples))
  domains = [names.domain(c, data if data in names.DOMAINS or data == "synthetic" else None)
             for c in class_list]
  if maps_path:
    maps, det = _load_maps(maps_path, samples)
  else:
    scorer = ColorBaseline(image_size).fit(load_samples(data, root, fit_split, class_list))
    maps, det = np.stack([scorer.grid_map(s) for s in samples]), None
  ev = Evaluator(class_list, domains, image_size)
  for i, s in enumerate(samples):
    image = s.load_image()
    mask = transforms.resize_mask(s.load_mask(image.shape[:2]), image_size)
    ev.add([class_list.index(s.class_name)], [s.label], maps[i:i + 1], mask[None],
           None if det is None else det[i:i + 1])
  results = ev.results(curves=True)
  per_class = {c: r.pop("curves") for c, r in results.items()}
  curves = {k: {c: cv[k] for c, cv in per_class.items()} for k in ("image", "pixel")}
  paths = report.write_tables(results, outdir, title=f"{data} {split}: anomaly detection metrics")
  for kind, by_class in curves.items():
    report.plot_curves(by_class, os.path.join(outdir, "curves"), kind)
  for c, name in enumerate(class_list):
    idx = ev.class_indices(c)
    order = sorted(idx, key=lambda i: -samples[i].label)[:heatmaps_per_class]
    if not order:
      continue
    heat = ev.normalized_maps(order)
    images = [transforms.resize_image(samples[i].load_image(), image_size) for i in order]
    masks = [transforms.resize_mask(samples[i].load_mask(samples[i].load_image().shape[:2]),
                                    image_size) for i in order]
    report.save_heatmaps(images, masks, heat,
                         [f"{name}/{samples[i].id.replace('/', '_').rsplit('.', 1)[0]}" for i in order],
                         os.path.join(outdir, "heatmaps"), vmin=0.0, vmax=1.0)
  return results, paths


def main(argv):
  del argv
  try:
    results, paths = run(FLAGS.data, FLAGS.root, FLAGS.split, FLAGS.classes, FLAGS.image_size,
                         FLAGS.outdir, FLAGS.maps, FLAGS.fit_split, FLAGS.heatmaps_per_class)
  except AajaxError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(open(paths["md"]).read())
  print(f"wrote {FLAGS.outdir}/metrics.{{md,csv,json}}, heatmaps/, curves/")


if __name__ == "__main__":
  define_flags()
  app.run(main)
