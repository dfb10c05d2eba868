"""The Phase-0 anomaly-awareness diagnostic of a Moondream, base vs AA-Moondream, on a labelled set.

    python -m launch.diagnose --model=runs/aa_moondream --data=synthetic
    python -m launch.diagnose --model=models/md2 --data=mvtec --root=/data/mvtec --limit=20
    python -m launch.diagnose --model=runs/aa_md/qa/model --data=visa --root=/data/visa --classes=pcb1,candle

--model is an AA-Moondream training workdir or model directory (the base Moondream it was built on
is diagnosed next to it: LoRA off, no adapters), or a plain converted Moondream directory (the base
alone). Subjects: the base Moondream; AA-Moondream's anomaly head (its image score and map boxes,
the fast path); AA-Moondream's LoRA decoder asked directly; and the same decoder conditioned on the
anomaly result (the explanation path). See `aajax.aa_moondream.diagnose` for the protocol. Writes
report.md (tables and the decision rule), metrics.json, answers.jsonl and silhouette.png to --out.
"""
import os
import sys

from absl import app, flags, logging

FLAGS = flags.FLAGS


def define_flags():
  """The command line flags; defined when run as a program, so launch modules import side by side."""
  flags.DEFINE_string("model", None, "AA-Moondream workdir / model directory, or a converted Moondream directory")
  flags.DEFINE_string("data", "synthetic", "data set: synthetic, mvtec, visa, btad, mpdd, brainmri, liverct, retina, jsonl")
  flags.DEFINE_string("root", "", "the data set's folder")
  flags.DEFINE_list("classes", [], "classes to use (default: all)")
  flags.DEFINE_string("split", "test", "split to use")
  flags.DEFINE_integer("limit", 0, "at most this many images per class and label (0 = all)")
  flags.DEFINE_string("out", "", "output folder (default: <model or workdir>/diagnose_<data>)")
  flags.DEFINE_integer("batch_size", 8, "images per call")
  flags.DEFINE_integer("max_tokens", 24, "longest answer generated")
  flags.DEFINE_list("thresholds", [], "check thresholds to change, e.g. accuracy=0.8,silhouette=0.2")
  flags.DEFINE_integer("synthetic_seed", 0, "seed of the synthetic set (data=synthetic)")
  flags.DEFINE_integer("synthetic_size", 128, "image size of the synthetic set (data=synthetic)")
  flags.DEFINE_integer("synthetic_n", 8, "test images per synthetic class (data=synthetic)")
  flags.mark_flags_as_required(["model"])


def load_samples(data: str, root: str, split: str, classes, limit: int, synthetic: dict) -> list:
  from aajax.data.datasets import load_samples as load
  samples = load(data, root, split, tuple(classes) or None, **(synthetic if data == "synthetic" else {}))
  if limit > 0:   # the first `limit` normal and anomalous images of each class
    kept, seen = [], {}
    for s in samples:
      key = (s.class_name, int(bool(s.label)))
      if seen.get(key, 0) < limit:
        kept.append(s)
        seen[key] = seen.get(key, 0) + 1
    samples = kept
  return samples


def subjects(runtime, max_tokens: int) -> list:
  """The models diagnosed side by side (those the loaded model has)."""
  from aajax.aa_moondream.diagnose import Subject
  base = runtime.base()
  out = [Subject("base Moondream", lambda im, q: base.ask(im, q, context=False, max_tokens=max_tokens),
                 base.detect, lambda im: base.layer_embeddings(im, adapted=False), "Moondream vision tower")]
  adapted = "AA-Moondream adapted tower" if runtime.head_params is not None else "Moondream vision tower"
  if runtime.source is not None:
    def head_answer(images, question):
      return ["yes" if r["score"] > 0.5 else "no" for r in runtime.analyse(images)]

    def head_boxes(images):
      return [[dict(zip(("x_min", "y_min", "x_max", "y_max"), b)) for b in r["boxes"]] for r in runtime.analyse(images)]
    out.append(Subject("AA-Moondream head", head_answer, head_boxes,
                       lambda im: runtime.layer_embeddings(im, adapted=True), adapted))
  if runtime.has_lora:
    out.append(Subject("AA-Moondream LoRA", lambda im, q: runtime.ask(im, q, context=False, max_tokens=max_tokens),
                       runtime.detect, lambda im: runtime.layer_embeddings(im, adapted=True), adapted))
    if runtime.source is not None:
      out.append(Subject("AA-Moondream LoRA + context",
                         lambda im, q: runtime.ask(im, q, context=True, max_tokens=max_tokens),
                         runtime.detect, lambda im: runtime.layer_embeddings(im, adapted=True), adapted))
  return out


def run(model: str, samples, out: str, batch_size: int = 8, max_tokens: int = 24, thresholds=None,
        progress=print) -> dict:
  from aajax.aa_moondream import diagnose
  from aajax.aa_moondream.exported import load_any
  from aajax.aa_moondream.runtime import AAMoondreamRuntime
  runtime = AAMoondreamRuntime(load_any(model))
  results = {}
  for subject in subjects(runtime, max_tokens):
    r = diagnose.diagnose(subject, samples, batch_size, progress)
    r["decision"] = diagnose.decision(r["metrics"], thresholds)
    results[subject.name] = r
  notes = [f"Model: `{model}`; data: {len(samples)} images."]
  return diagnose.write_report(results, out, notes=notes)


def parse_thresholds(items) -> dict:
  from aajax.aa_moondream.diagnose import THRESHOLDS
  from aajax.errors import ConfigError
  out = dict(THRESHOLDS)
  for item in items:
    name, _, value = item.partition("=")
    if name not in out or not value:
      raise ConfigError(f"--thresholds takes name=value with a name among {', '.join(out)}; got {item!r}")
    out[name] = (out[name][0], float(value))
  return out


def main(argv):
  del argv
  if not FLAGS["verbosity"].present:   # orbax logs every restore at INFO
    logging.set_verbosity(logging.WARNING)
  from aajax.errors import AajaxError
  synthetic = {"seed": FLAGS.synthetic_seed, "image_size": FLAGS.synthetic_size, "n_test": FLAGS.synthetic_n}
  out = FLAGS.out or os.path.join(os.path.abspath(FLAGS.model), f"diagnose_{FLAGS.data}")
  try:
    samples = load_samples(FLAGS.data, FLAGS.root, FLAGS.split, FLAGS.classes, FLAGS.limit, synthetic)
    summary = run(FLAGS.model, samples, out, FLAGS.batch_size, FLAGS.max_tokens, parse_thresholds(FLAGS.thresholds),
                  progress=lambda m: print(m, flush=True))
  except AajaxError as e:
    sys.exit(f"launch.diagnose: {e}")
  for name, s in summary.items():
    m = s["metrics"]
    print(f"{name}: accuracy {m['accuracy']:.3f}, hallucination {m['hallucination_rate']:.3f}, "
          f"miss {m['miss_rate']:.3f}, IoU {m['localization_iou']:.3f}, silhouette {m['silhouette']:.3f} -> "
          f"{s['decision']['passed']}/5 checks")
  print(f"wrote {out}/report.md")


if __name__ == "__main__":
  define_flags()
  app.run(main)
