"""End to end: launch.train (both AA stages) -> launch.eval -> launch.infer on the synthetic set."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# The demo's model on a smaller slice of the synthetic set: 3 classes, 16 training images each.
TINY = ["--config.model.tower.heads=2", "--config.model.tower.mlp_dim=256",
        "--config.data.synthetic.n_train=16", "--config.data.synthetic.n_test=8",
        "--config.data.classes=brick,coffee,coins", "--config.stage_text.steps=20", "--config.stage_text.ckpt_every=5",
        "--config.stage_image.steps=120", "--config.stage_image.ckpt_every=60", "--config.stage_image.lr=3e-3",
        "--config.log_every=10"]


def run(module, *args, timeout=900):
  env = {**os.environ, "PYTHONPATH": ROOT, "XLA_FLAGS": ""}
  proc = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=timeout)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return proc.stdout + proc.stderr


def logged(path, key):
  rows = [json.loads(line) for line in open(path)]
  return [r[key] for r in rows if r.get("split") == "train" and key in r]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("aa_run"))
  out = run("launch.train", "--config=configs/aa_siglip.py", f"--workdir={workdir}", *TINY)
  return workdir, out


@pytest.mark.e2e
def test_both_stages_train_and_stage2_lifts_pixel_auroc(trained):
  workdir, out = trained
  assert "stage text: finished at step 20" in out and "stage image: finished at step 120" in out
  assert "steps/s" in out and "ETA" in out
  text_loss = logged(os.path.join(workdir, "text", "metrics.jsonl"), "loss")
  image_loss = logged(os.path.join(workdir, "image", "metrics.jsonl"), "seg_loss")
  assert text_loss[-1] < text_loss[0]
  assert np.mean(image_loss[-2:]) < image_loss[0]
  metrics = json.load(open(os.path.join(workdir, "image", "eval", "metrics.json")))
  mean = metrics["mean"]
  assert set(metrics["classes"]) == {"brick", "coffee", "coins"}
  assert mean["pixel_auroc"] > 0.6, mean   # chance is 0.5; this run measures 0.68
  for name in ("metrics.md", "metrics.csv", "curves/pixel_roc.png"):
    assert os.path.isfile(os.path.join(workdir, "image", "eval", name))
  assert len(os.listdir(os.path.join(workdir, "image", "eval", "heatmaps", "brick"))) == 4
  assert os.path.isfile(os.path.join(workdir, "image", "model", "anchors.npz"))


@pytest.mark.e2e
def test_eval_reproduces_the_training_evaluation(trained, tmp_path):
  workdir, _ = trained
  out = run("launch.eval", f"--workdir={workdir}", "--synthetic_size=128", "--synthetic_n=8",
            "--classes=brick,coffee,coins", f"--out={tmp_path}")
  assert "pixel_auroc" in out
  again = json.load(open(tmp_path / "metrics.json"))["mean"]
  first = json.load(open(os.path.join(workdir, "image", "eval", "metrics.json")))["mean"]
  assert again["pixel_auroc"] == pytest.approx(first["pixel_auroc"], abs=1e-6)


@pytest.mark.e2e
def test_infer_writes_maps_and_scores_for_user_images(trained, tmp_path):
  from PIL import Image
  from aajax.data.synthetic import make_synthetic
  workdir, _ = trained
  samples = make_synthetic(image_size=96, classes=("brick",), n_test=2).test
  Image.fromarray(samples[0].load_image()).save(tmp_path / "a.png")
  Image.fromarray(samples[1].load_image()).convert("L").save(tmp_path / "b.jpg")   # grayscale: converted
  out = run("launch.infer", f"--workdir={workdir}", f"--images={tmp_path}", "--class_name=brick",
            "--threshold=0.5", f"--out={tmp_path / 'out'}")
  rows = json.load(open(tmp_path / "out" / "scores.json"))
  assert [os.path.basename(r["image"]) for r in rows] == ["a.png", "b.jpg"]
  assert all(0 <= r["image_score"] <= 1 and 0 <= r["max_pixel_score"] <= 1 for r in rows)
  assert os.path.isfile(tmp_path / "out" / "a.png")
  assert "ANOMALOUS" in out or "normal" in out
  bad = subprocess.run([sys.executable, "-m", "launch.infer", f"--workdir={workdir}", "--images=missing.png"],
                       cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ROOT})
  assert bad.returncode != 0 and "missing.png" in bad.stderr
