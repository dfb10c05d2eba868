"""The whole pipeline on a tiny random Moondream and the synthetic set, in process:
stage "anomaly" through the trainer (the head learns: image and pixel AUROC above chance), stage "qa"
(LoRA lowers the QA loss), the exported model's explain(), and the diagnostic's report."""
import json
import os

import numpy as np
import pytest

from aajax.train.config import apply_overrides, load_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# A 4-block tower at 48 px (12 x 12 patches), the tiny decoder, 3 classes of 16 training images.
TINY = ["model.vision={'enc_dim': 32, 'enc_patch_size': 4, 'enc_n_layers': 4, 'enc_ff_dim': 64, "
        "'enc_n_heads': 2, 'crop_size': 48, 'overlap_margin': 1, 'proj_inner_dim': 48}",
        "model.max_context=256", "model.embed_dim=32", "model.lora_rank=8", "data.classes=brick,coffee,coins",
        "data.synthetic.image_size=64", "data.synthetic.n_train=16", "data.synthetic.n_test=8",
        "eval.batch_size=8", "eval.heatmaps_per_class=1", "qa.max_len=40", "qa.eval_items=40", "log_every=20",
        "stage_anomaly.steps=100", "stage_anomaly.ckpt_every=100", "stage_anomaly.lr=3e-3",
        "stage_qa.steps=60", "stage_qa.ckpt_every=60", "stage_qa.lr=1e-2"]


def tiny_config():
  c = load_config(os.path.join(ROOT, "configs/aa_moondream.py"))
  for item in TINY:
    key, _, value = item.partition("=")
    if key == "model.vision":
      import ast
      import ml_collections
      c.model.vision = ml_collections.ConfigDict(ast.literal_eval(value))
    else:
      apply_overrides(c, [item])
  return c


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  import jax
  from aajax.train import stages
  from aajax.train.mesh import make_mesh
  workdir = str(tmp_path_factory.mktemp("aa_md"))
  results = stages.run(tiny_config(), workdir, mesh=make_mesh(jax.devices()[:1]))
  return workdir, results


def logged(path, key):
  rows = [json.loads(line) for line in open(path)]
  return [r[key] for r in rows if r.get("split") == "train" and key in r]


def test_stage_a_head_learns(run):
  workdir, results = run
  assert results["anomaly"].step == 100
  loss = logged(os.path.join(workdir, "anomaly", "metrics.jsonl"), "loss")
  assert loss[-1] < loss[0]
  mean = json.load(open(os.path.join(workdir, "anomaly", "eval", "metrics.json")))["mean"]
  # chance is 0.5; this run measures image AUROC 0.69 and pixel AUROC 0.67 (3 classes, 24 test images)
  assert mean["image_auroc"] > 0.6 and mean["pixel_auroc"] > 0.6, mean
  assert os.path.isfile(os.path.join(workdir, "anomaly", "model", "config.json"))


def test_stage_b_lora_lowers_the_qa_loss(run):
  import jax
  from aajax.aa_moondream.tasks import AAMoondreamTask, qa_metrics
  from aajax.anomaly.data import eval_split
  from aajax.train.stages import stage_config
  workdir, results = run
  qa = results["qa"]
  config = stage_config(tiny_config(), "qa", {"anomaly": os.path.join(workdir, "anomaly", "export")})
  task = AAMoondreamTask()
  frozen, fresh = task.init(jax.random.key(0), config)
  samples = eval_split(config.data).samples
  before = qa_metrics(task, fresh["lora"], frozen["moondream"], samples, 8, 40)
  after = qa.eval_metrics
  # this run measures the held-out QA loss falling from 10.6 to 5.5 (answer tokens 7.1 -> 2.7, coordinate
  # and size bins 3.5 -> 2.9) and the answer-token accuracy rising from 0.00 to 0.51 (LoRA on qkv, fc1, fc2)
  assert after["qa_loss"] < 0.65 * before["qa_loss"], (before, after)
  assert after["qa_token_loss"] < 0.5 * before["qa_token_loss"]
  assert after["qa_token_accuracy"] > before["qa_token_accuracy"] + 0.4
  train = logged(os.path.join(workdir, "qa", "metrics.jsonl"), "loss")
  assert train[-1] < train[0]


def test_explain_and_diagnostic(run, tmp_path):
  from aajax.aa_moondream.runtime import AAMoondreamRuntime
  from aajax.data.synthetic import make_synthetic
  from launch import diagnose as launch_diagnose
  workdir, _ = run
  rt = AAMoondreamRuntime.load(workdir)
  assert rt.has_lora and rt.source is not None
  image = make_synthetic(image_size=64, classes=("coins",), n_test=2).test[1]   # anomalous
  out = rt.explain(image.load_image())
  assert 0 <= out["score"] <= 1 and out["map"].shape == (64, 64)
  assert float(out["map"].min()) >= 0 and float(out["map"].max()) <= 1
  assert isinstance(out["text"], str) and isinstance(out["region_boxes"], list)
  assert all(len(b) == 4 for b in out["boxes"])
  samples = launch_diagnose.load_samples("synthetic", "", "test", ["brick", "coins"], 2,
                                         {"image_size": 64, "n_test": 4})
  summary = launch_diagnose.run(workdir, samples, str(tmp_path), batch_size=8, max_tokens=8, progress=None)
  assert list(summary) == ["base Moondream", "AA-Moondream head", "AA-Moondream LoRA", "AA-Moondream LoRA + context"]
  for s in summary.values():
    assert 0 <= s["metrics"]["accuracy"] <= 1 and len(s["silhouette_per_layer"]) == 4
  report = (tmp_path / "report.md").read_text()
  assert "Decision rule" in report and "base Moondream" in report
  assert os.path.isfile(tmp_path / "silhouette.png")


def random_aa_model(path: str) -> str:
  """A small random AA-SigLIP model directory (what `launch.train --config=configs/aa_siglip.py` exports)."""
  import jax
  import ml_collections
  from aajax.anomaly import objectives, recipe
  from aajax.anomaly.data import Split
  from aajax.anomaly.model import AAModel
  from aajax.anomaly.prompts import prompt_ids
  from aajax.anomaly.tasks import write_model
  m = recipe.model_defaults()
  m.tower = ml_collections.ConfigDict(dict(family="siglip", width=32, depth=4, heads=2, mlp_dim=64, patch=8,
                                           image_size=32, text_len=12, vocab=512))
  m.image_size, m.text_adapt_until = 32, 1
  cfg = recipe.aa_config(m)
  params = recipe.initial_params(cfg, m, jax.random.PRNGKey(0))
  split = Split("synthetic", [], ["coins"], ["old coins on a tray"], ["Industrial"])
  anchors = objectives.anchor_table(AAModel(cfg), params, prompt_ids(recipe.tokenizer_for(cfg, m), split.real_names))
  write_model(path, cfg, params, recipe.tokenizer_spec(cfg, m), split, np.asarray(anchors), "siglip")
  return path


def test_hybrid_path_conditions_the_decoder_on_an_aa_model(run, tmp_path):
  """The seed's hybrid path: an AA-SigLIP map and score handed to AA-Moondream's decoder."""
  import dataclasses
  from aajax.aa_moondream import exported, sources
  from aajax.aa_moondream.runtime import AAMoondreamRuntime
  from aajax.data.synthetic import make_synthetic
  workdir, _ = run
  aa_dir = random_aa_model(str(tmp_path / "aa"))
  images = [s.load_image() for s in make_synthetic(image_size=64, classes=("coins",), n_test=2).test]
  for name in ("coins", "metal washer"):   # a training class (stored anchors) or any object name
    scores, maps = sources.AASource(aa_dir, name)(images)
    assert scores.shape == (2,) and maps.shape == (2, 32, 32)
    assert 0 <= scores.min() and scores.max() <= 1 and 0 <= maps.min() and maps.max() <= 1
  trained = exported.load_model(workdir)
  hybrid = dataclasses.replace(trained, source={"kind": "aa", "path": aa_dir, "class_name": "coins"})
  rt = AAMoondreamRuntime(hybrid)
  assert isinstance(rt.source, sources.AASource)
  out = rt.explain(images[1])
  assert out["map"].shape == (64, 64) and isinstance(out["text"], str)
  with pytest.raises(Exception, match="needs the path"):
    sources.make_source({"kind": "aa"})
