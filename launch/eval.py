"""Evaluate a trained AA model on any data set: per-class metrics, tables, heatmaps and curves.

    python -m launch.eval --workdir=runs/aa_demo                       # the run's own test split
    python -m launch.eval --model=runs/aa_demo/image/model --data=mvtec --root=/data/mvtec \
        --out=runs/aa_demo/eval_mvtec

Writes metrics.md / metrics.csv / metrics.json (one row per class and the mean), heatmaps/ (image |
ground truth | prediction strips) and curves/ under --out.
"""
import os
import sys

from absl import app, flags

FLAGS = flags.FLAGS


def define_flags():
  """The command line flags; defined when run as a program, so launch modules import side by side."""
  flags.DEFINE_string("workdir", "", "a launch.train work directory (its image-stage model is used)")
  flags.DEFINE_string("model", "", "a trained AA model directory (default: <workdir>/image/model)")
  flags.DEFINE_string("data", "synthetic", "data set: synthetic, mvtec, visa, btad, mpdd, brainmri, liverct, retina, jsonl")
  flags.DEFINE_string("root", "", "the data set's folder")
  flags.DEFINE_list("classes", [], "classes to evaluate (default: all)")
  flags.DEFINE_string("split", "test", "split to evaluate")
  flags.DEFINE_string("domain", "", "industrial | medical (default: from the data set)")
  flags.DEFINE_string("out", "", "output folder (default: <workdir>/eval_<data> or <model>/../eval_<data>)")
  flags.DEFINE_integer("batch_size", 8, "images per forward")
  flags.DEFINE_integer("heatmaps", 4, "heatmap strips per class")
  flags.DEFINE_integer("synthetic_seed", 0, "seed of the synthetic set (data=synthetic)")
  flags.DEFINE_integer("synthetic_size", 256, "image size of the synthetic set (data=synthetic)")
  flags.DEFINE_integer("synthetic_n", 32, "test images per synthetic class")


def run(model_dir: str, data, out: str, batch_size: int, heatmaps: int) -> dict:
  from aajax.anomaly import evaluate as aa_eval
  from aajax.anomaly.data import eval_split
  from aajax.anomaly.exported import load_trained
  from aajax.data.loader import Loader
  trained = load_trained(model_dir)
  split = eval_split(data)

  def loader_for(samples, class_names):
    return Loader(samples, batch_size, trained.model.cfg.image_size, norm=trained.norm, shuffle=False,
                  class_names=class_names)

  table = aa_eval.anchors_for(trained.model, trained.params, trained.tokenizer, split, loader_for)
  summary = aa_eval.evaluate(trained.model, trained.params, table, loader_for(split.samples, split.class_names),
                             split.domains, out, heatmaps)
  return summary


def main(argv):
  del argv
  from aajax.anomaly.data import data_defaults
  from aajax.anomaly.exported import model_dir_from_flags
  from aajax.errors import AajaxError
  model_dir = model_dir_from_flags("launch.eval", FLAGS.workdir, FLAGS.model)
  data = data_defaults()
  data.name, data.root, data.classes, data.eval_split, data.domain = (
      FLAGS.data, FLAGS.root, tuple(FLAGS.classes), FLAGS.split, FLAGS.domain)
  data.synthetic.update(seed=FLAGS.synthetic_seed, image_size=FLAGS.synthetic_size, n_test=FLAGS.synthetic_n)
  out = FLAGS.out or os.path.join(FLAGS.workdir or os.path.dirname(os.path.abspath(model_dir)), f"eval_{FLAGS.data}")
  try:
    summary = run(model_dir, data, out, FLAGS.batch_size, FLAGS.heatmaps)
  except AajaxError as e:
    sys.exit(f"launch.eval: {e}")
  print(f"wrote {out}/metrics.md")
  print("mean: " + ", ".join(f"{k}={v:.4f}" for k, v in summary.items() if isinstance(v, float)))


if __name__ == "__main__":
  define_flags()
  app.run(main)
