"""launch.report end to end on the synthetic set: tables, heatmaps, curves; --maps input; errors."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from aajax.data import make_synthetic
from aajax.errors import DataError
from launch import report as cli


def test_baseline_report(tmp_path):
  results, paths = cli.run("synthetic", None, "test", ["coins", "retina"], 64, str(tmp_path),
                           heatmaps_per_class=2)
  doc = json.load(open(paths["json"]))
  assert set(doc["classes"]) == {"coins", "retina"}
  assert 0.5 < doc["mean"]["pixel_auroc"] <= 1.0
  assert len(os.listdir(tmp_path / "heatmaps" / "coins")) == 2
  assert sorted(os.listdir(tmp_path / "curves")) == ["image_pr.png", "image_roc.png",
                                                     "pixel_pr.png", "pixel_roc.png"]


def test_maps_file(tmp_path):
  samples = make_synthetic().test
  samples = [s for s in samples if s.class_name == "brick"]
  # the ground truth itself as the map: every metric is perfect
  maps = np.stack([s.load_mask((256, 256)).astype(np.float32) for s in samples])
  np.savez(tmp_path / "maps.npz", ids=np.array([s.id for s in samples]), maps=maps,
           det_scores=np.array([s.label for s in samples], np.float32))
  results, _ = cli.run("synthetic", None, "test", ["brick"], 256, str(tmp_path / "out"),
                       maps_path=str(tmp_path / "maps.npz"), heatmaps_per_class=1)
  assert results["brick"]["pixel_auroc"] == 1.0 and results["brick"]["pixel_aupro"] == pytest.approx(1.0)
  assert results["brick"]["image_auroc"] == 1.0
  with pytest.raises(DataError, match="no map for"):
    cli.run("synthetic", None, "test", ["coins"], 64, str(tmp_path / "o2"),
            maps_path=str(tmp_path / "maps.npz"))


def test_command_line_error_is_one_line(tmp_path):
  r = subprocess.run([sys.executable, "-m", "launch.report", f"--outdir={tmp_path}", "--data=mvtec",
                      f"--root={tmp_path / 'missing'}"], capture_output=True, text=True,
                     cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
  assert r.returncode == 2 and r.stderr.strip().startswith("error: data root")
  assert "Traceback" not in r.stderr
