"""The diagnostic's metrics against values computed by hand on a fixed toy set."""
import json
import os

import numpy as np
import pytest
from sklearn.metrics import silhouette_score

from aajax.aa_moondream import diagnose as D
from aajax.data.sample import Sample


@pytest.mark.parametrize("answer, yesno, opened", [
    ("yes", True, False), ("Yes, a scratch at the top left.", True, True), ("no", False, False),
    ("No, it looks normal.", False, False), ("There is a crack near the edge", True, True),
    ("There is no damage.", False, False), ("a cup of coffee", False, False), ("", False, False),
    ("none", False, False), ("I see a stain.", True, True)])
def test_answer_parsing(answer, yesno, opened):
  assert D.claims_defect_yesno(answer) is yesno
  assert D.claims_defect_open(answer) is opened


def test_detection_metrics_by_hand():
  labels = [0, 0, 0, 0, 1, 1, 1]
  claims = [0, 1, 0, 0, 1, 0, 1]
  m = D.detection_metrics(labels, claims)
  assert m["accuracy"] == pytest.approx(5 / 7)
  assert m["hallucination_rate"] == pytest.approx(1 / 4)
  assert m["miss_rate"] == pytest.approx(1 / 3)


def test_box_iou_by_hand():
  mask = np.zeros((10, 10), np.uint8)
  mask[0:4, 0:4] = 1                                     # 16 px
  box = {"x_min": 0.2, "y_min": 0.2, "x_max": 0.6, "y_max": 0.6}   # pixels 2..5 x 2..5: 16 px
  assert D.boxes_mask([box], (10, 10)).sum() == 16
  assert D.box_iou([box], mask) == pytest.approx(4 / 28)   # overlap 2x2, union 16 + 16 - 4
  assert D.box_iou([], mask) == 0.0
  whole = {"x_min": -0.1, "y_min": 0.0, "x_max": 1.5, "y_max": 1.0}   # unclamped boxes are fine
  assert D.box_iou([whole], mask) == pytest.approx(16 / 100)


def test_silhouette_by_hand_and_against_sklearn():
  # Four unit vectors: two at 0 deg (normal), one at 90 and one at 180 deg (anomalous); cos distances
  # 0->0: 0, 0->90: 1, 0->180: 2, 90->180: 1.
  x = np.array([[1, 0], [1, 0], [0, 1], [-1, 0]], float)
  labels = np.array([0, 0, 1, 1])
  # normal points: a = 0, b = (1 + 2) / 2 = 1.5 -> s = 1; the 90 deg point: a = 1, b = 1 -> 0;
  # the 180 deg point: a = 1, b = 2 -> 0.5. Mean (1 + 1 + 0 + 0.5) / 4.
  assert D.silhouette(x, labels) == pytest.approx(2.5 / 4)
  rng = np.random.default_rng(0)
  y = rng.standard_normal((30, 5))
  lab = rng.integers(0, 2, 30)
  assert D.silhouette(y, lab) == pytest.approx(silhouette_score(y, lab, metric="cosine"), abs=1e-9)
  classes = np.array(["a"] * 15 + ["b"] * 15)
  lab[:15], lab[15:] = [0] * 8 + [1] * 7, 0   # class b has one label only: left out
  assert D.class_silhouette(y, lab, classes) == pytest.approx(silhouette_score(y[:15], lab[:15], metric="cosine"))


def test_decision_rule():
  good = {"accuracy": 0.9, "hallucination_rate": 0.1, "miss_rate": 0.5, "localization_iou": 0.1,
          "silhouette": 0.3}
  d = D.decision(good)
  assert [c["passed"] for c in d["checks"]] == [True, True, False, False, True]
  assert d["passed"] == 3 and d["verdict"].startswith("viable")
  d = D.decision({**good, "silhouette": float("nan")})
  assert d["passed"] == 2 and d["verdict"].startswith("not viable")


def toy_samples():
  """Two classes; in each, two normal images and one anomalous with a 4 x 4 defect at the top left."""
  out = []
  for c in ("a", "b"):
    for i, label in enumerate((0, 0, 1)):
      mask = np.zeros((8, 8), np.uint8)
      if label:
        mask[:4, :4] = 1
      out.append(Sample(np.full((8, 8, 3), 10 * i, np.uint8), mask if label else None, label, c,
                        "spot" if label else "good", f"{c}/{i}"))
  return out


def test_protocol_on_a_fixed_toy_set(tmp_path):
  samples = toy_samples()
  # Fixed answers by image: the subject says yes to a/0 (hallucination) and b/2, no to a/2 (a miss).
  yes = {"a/0", "b/2"}
  boxes = {"a/2": [], "b/2": [{"x_min": 0.0, "y_min": 0.0, "x_max": 0.25, "y_max": 0.5}]}   # IoU 8/16
  ids = iter([s.id for s in samples])
  order = []

  def answer(images, question):
    if question == D.YESNO_QUESTION:
      order.extend(next(ids) for _ in images)
      return ["yes" if i in yes else "no" for i in order[-len(images):]]
    return ["I see a scratch" if i in yes else "nothing" for i in order[-len(images):]]

  def detect(images):
    return [boxes.get(i, []) for i in order[-len(images):]]

  def embeddings(images):   # 2 layers: layer 1 separates by label, layer 2 does not
    ids_ = order[-len(images):]
    lab = [1.0 if i.endswith("/2") else 0.0 for i in ids_]
    l1 = [[1 - v, v] for v in lab]
    l2 = [[1.0, 0.0] for _ in ids_]
    return np.array([l1, l2])

  r = D.diagnose(D.Subject("toy", answer, detect, embeddings), samples, batch_size=4)
  m = r["metrics"]
  assert m["accuracy"] == pytest.approx(4 / 6)   # wrong: a/0 (yes on normal), a/2 (no on anomalous)
  assert m["hallucination_rate"] == pytest.approx(1 / 4)
  assert m["miss_rate"] == pytest.approx(1 / 2)
  assert m["open_accuracy"] == pytest.approx(4 / 6)
  assert m["localization_iou"] == pytest.approx((0 + 0.5) / 2)
  # layer 1: per class, normals at distance 0, anomaly at distance 1: s = 1, 1 and 0 (a lone point)
  assert r["silhouette_per_layer"][0] == pytest.approx(2 / 3)
  assert r["silhouette_per_layer"][1] == pytest.approx(0.0)
  assert m["silhouette"] == pytest.approx(2 / 3) and m["silhouette_layer"] == 1
  assert r["decision"]["passed"] == 1   # only the silhouette check (accuracy 0.667 < 0.75)

  summary = D.write_report({"toy": r, "toy again": r}, str(tmp_path))
  for name in ("report.md", "metrics.json", "answers.jsonl", "silhouette.png"):
    assert os.path.getsize(tmp_path / name) > 0
  report = (tmp_path / "report.md").read_text()
  assert "| detection accuracy (yes/no) | 0.667 | 0.667 |" in report and "1/5" in report
  assert json.load(open(tmp_path / "metrics.json"))["toy"]["metrics"]["miss_rate"] == 0.5
  assert len((tmp_path / "answers.jsonl").read_text().splitlines()) == 12
  assert summary["toy"]["decision"]["passed"] == 1
