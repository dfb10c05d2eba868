"""Anomaly maps and scores for your own images with a trained AA model.

    python -m launch.infer --workdir=runs/aa_demo --class_name=brick --images=a.png,b.jpg --out=runs/infer
    python -m launch.infer --model=models/aa --class_name="metal nut" --images=photos/ --threshold=0.5

--class_name is one of the model's training classes (their stored anchors are used) or any object
name, which is put in the prompt ensemble ("a photo of a damaged <name>.", ...). Scores are the
probabilities the training losses calibrate (see aajax.anomaly.inference.make_probability_fn): a
pixel map in [0, 1] and an image score in [0, 1]. Writes <out>/<image>.png (image | predicted region
in red when --threshold is given | heatmap) and <out>/scores.csv / scores.json.
"""
import csv
import json
import os
import sys

import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS


def define_flags():
  """The command line flags; defined when run as a program, so launch modules import side by side."""
  flags.DEFINE_string("workdir", "", "a launch.train work directory (its image-stage model is used)")
  flags.DEFINE_string("model", "", "a trained AA model directory (default: <workdir>/image/model)")
  flags.DEFINE_list("images", [], "image files, or folders of images")
  flags.DEFINE_string("class_name", "", "what the images show: a training class, or any object name")
  flags.DEFINE_float("threshold", None, "pixel probability above which a pixel is marked anomalous; "
                     "an image is anomalous when its image score exceeds it")
  flags.DEFINE_string("out", "", "output folder (default: <workdir or model>/../infer)")
  flags.DEFINE_integer("batch_size", 8, "images per forward")


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def image_files(entries) -> list[str]:
  from aajax.errors import InputError
  files = []
  for entry in entries:
    if os.path.isdir(entry):
      files += sorted(os.path.join(entry, f) for f in os.listdir(entry) if f.lower().endswith(IMAGE_SUFFIXES))
    elif os.path.isfile(entry):
      files.append(entry)
    else:
      raise InputError(f"no such image file or folder: {entry}")
  if not files:
    raise InputError("no images given (--images takes files or folders of images)")
  return files


def run(model_dir: str, files, class_name: str, out: str, threshold=None, batch_size: int = 8) -> list[dict]:
  from aajax.anomaly import inference
  from aajax.anomaly.exported import load_trained
  from aajax.data.sample import read_image
  from aajax.data.transforms import preprocess
  from aajax.eval.report import save_heatmaps
  trained = load_trained(model_dir)
  size = trained.model.cfg.image_size
  anchors = trained.class_anchors(class_name or trained.class_names[0])
  predict = inference.make_probability_fn(trained.model)
  rows = []
  for start in range(0, len(files), batch_size):
    chunk = files[start:start + batch_size]
    raw = [read_image(f) for f in chunk]
    batch = np.stack([preprocess(im, size, trained.norm) for im in raw])
    pad = batch_size - len(chunk)   # one compiled shape for every batch
    batch = np.concatenate([batch, np.zeros((pad,) + batch.shape[1:], batch.dtype)]) if pad else batch
    pix, img = predict(trained.params, np.repeat(anchors[None], len(batch), 0), batch)
    pix, img = np.asarray(pix)[:len(chunk)], np.asarray(img)[:len(chunk)]
    shown = [preprocess(im, size, "none").clip(0, 1) * 255 for im in raw]
    regions = None if threshold is None else [p > threshold for p in pix]
    names = [os.path.splitext(os.path.basename(f))[0] for f in chunk]
    save_heatmaps([s.astype(np.uint8) for s in shown], regions, pix, names, out, vmin=0.0, vmax=1.0)
    for f, p, s in zip(chunk, pix, img):
      row = {"image": f, "class_name": class_name, "image_score": float(s), "max_pixel_score": float(p.max())}
      if threshold is not None:
        row.update(anomalous=bool(s > threshold), anomalous_pixels=float((p > threshold).mean()))
      rows.append(row)
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "scores.json"), "w") as f:
    json.dump(rows, f, indent=1)
  with open(os.path.join(out, "scores.csv"), "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
  return rows


def main(argv):
  del argv
  from aajax.anomaly.exported import model_dir_from_flags
  from aajax.errors import AajaxError
  model_dir = model_dir_from_flags("launch.infer", FLAGS.workdir, FLAGS.model)
  out = FLAGS.out or os.path.join(os.path.dirname(os.path.abspath(model_dir)), "infer")
  try:
    rows = run(model_dir, image_files(FLAGS.images), FLAGS.class_name, out, FLAGS.threshold, FLAGS.batch_size)
  except AajaxError as e:
    sys.exit(f"launch.infer: {e}")
  for r in rows:
    flag = "" if "anomalous" not in r else ("  ANOMALOUS" if r["anomalous"] else "  normal")
    print(f"{r['image']}: image score {r['image_score']:.3f}, max pixel {r['max_pixel_score']:.3f}{flag}")
  print(f"wrote {out}/scores.csv and heatmaps")


if __name__ == "__main__":
  define_flags()
  app.run(main)
