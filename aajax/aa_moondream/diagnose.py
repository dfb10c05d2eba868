"""The Phase-0 anomaly-awareness diagnostic: how much does a Moondream already know about defects?

On a labelled anomaly set, for each model ("subject"):
  yes/no prompt  "Is there a defect in this image?": the answer claims a defect when its first word
                 is "yes" (when it is neither yes nor no, the open-answer rule decides);
  open prompt    "Describe any defect or damage you see in this image.": claims a defect when it names
                 one (defect, damage, scratch, crack, stain, ...) and does not start with a negation;
  detection accuracy = share of images whose claim equals the label; hallucination rate = share of
                 normal images with a claimed defect; miss rate = share of anomalous images without one;
  localisation IoU = mean over anomalous images of IoU(union of the `detect("defect")` boxes
                 rasterised at the mask's resolution, mask); no box gives 0;
  silhouette     of normal vs anomalous image embeddings (mean token of each vision block's output),
                 cosine distance, within each class (across classes, what the object is dominates the
                 embedding), averaged over the classes that have both labels, per layer; the check
                 uses the best layer.
The decision rule of the seed: five checks (accuracy, hallucination, miss rate, IoU, silhouette);
at least 3 passing means Moondream is worth fine-tuning directly (LoRA on anomaly QA), fewer means
AA-CLIP (optionally the hybrid AA-CLIP -> Moondream explanation path). The seed names the checks
and the 3-of-5 rule but no thresholds: `THRESHOLDS` are ours and configurable.
"""
import dataclasses
import json
import os
from typing import Callable

import numpy as np

from aajax.aa_moondream import qa as qa_lib

YESNO_QUESTION = qa_lib.QUESTIONS["yesno"]
OPEN_QUESTION = qa_lib.OPEN_QUESTION
DEFECT_TERMS = ("defect", "damage", "scratch", "crack", "stain", "spot", "hole", "broken", "dent", "anomal",
                "flaw", "missing", "contamin", "tear", "deform", "misplaced", "fault", "rust", "chip")
NEGATIONS = ("no", "none", "nothing", "there is no", "there are no", "i see no", "i don't see", "normal",
             "it looks normal", "looks fine", "not ")
# (metric, comparison, threshold): the check passes when `value <cmp> threshold`.
THRESHOLDS = {"accuracy": (">=", 0.75), "hallucination_rate": ("<=", 0.2), "miss_rate": ("<=", 0.3),
              "localization_iou": (">=", 0.3), "silhouette": (">=", 0.1)}


# ------------------------------------------------------------------------------- answer parsing

def _words(answer: str) -> list[str]:
  return [w.strip(".,;:!?\"'()") for w in answer.lower().split()]


def claims_defect_open(answer: str) -> bool:
  a = " ".join(_words(answer))
  if not a or any(a.startswith(n if n.endswith(" ") else n + " ") or a == n for n in NEGATIONS):
    return False
  return any(t in a for t in DEFECT_TERMS)


def claims_defect_yesno(answer: str) -> bool:
  words = [w for w in _words(answer) if w]
  if words and words[0] in ("yes", "no"):
    return words[0] == "yes"
  return claims_defect_open(answer)


# ------------------------------------------------------------------------------------ metrics

def detection_metrics(labels, claims) -> dict:
  labels, claims = np.asarray(labels, bool), np.asarray(claims, bool)
  normal, anomalous = ~labels, labels
  return {"accuracy": float(np.mean(claims == labels)),
          "hallucination_rate": float(claims[normal].mean()) if normal.any() else float("nan"),
          "miss_rate": float((~claims[anomalous]).mean()) if anomalous.any() else float("nan"),
          "n_normal": int(normal.sum()), "n_anomalous": int(anomalous.sum())}


def boxes_mask(boxes, shape) -> np.ndarray:
  """Union of boxes {x_min, y_min, x_max, y_max} in [0, 1] as a boolean mask: pixel (r, c) is in a box
  when its centre ((c + 0.5) / W, (r + 0.5) / H) is, with x_min <= x < x_max."""
  h, w = shape
  out = np.zeros((h, w), bool)
  xs, ys = (np.arange(w) + 0.5) / w, (np.arange(h) + 0.5) / h
  for b in boxes:
    cols = (xs >= b["x_min"]) & (xs < b["x_max"])
    rows = (ys >= b["y_min"]) & (ys < b["y_max"])
    out |= rows[:, None] & cols[None, :]
  return out


def box_iou(boxes, mask) -> float:
  mask = np.asarray(mask) > 0
  pred = boxes_mask(boxes, mask.shape)
  union = (pred | mask).sum()
  return float((pred & mask).sum() / union) if union else 0.0


def silhouette(embeddings, labels) -> float:
  """Mean silhouette with cosine distance (1 - cos); a point alone in its cluster scores 0 (sklearn's
  convention). Needs both labels present."""
  x = np.asarray(embeddings, np.float64)
  labels = np.asarray(labels)
  x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
  d = np.clip(1.0 - x @ x.T, 0.0, None)
  np.fill_diagonal(d, 0.0)
  scores = np.zeros(len(x))
  for i in range(len(x)):
    same = labels == labels[i]
    n_same = same.sum() - 1
    if n_same == 0:
      continue
    a = d[i, same].sum() / n_same
    b = d[i, ~same].mean()
    scores[i] = (b - a) / max(a, b) if max(a, b) > 0 else 0.0
  return float(scores.mean())


def class_silhouette(embeddings, labels, classes) -> float:
  """Mean over classes holding both labels of the within-class silhouette; NaN when none does."""
  labels, classes = np.asarray(labels), np.asarray(classes)
  values = [silhouette(np.asarray(embeddings)[classes == c], labels[classes == c]) for c in np.unique(classes)
            if len(set(labels[classes == c])) == 2]
  return float(np.mean(values)) if values else float("nan")


def decision(metrics: dict, thresholds=None) -> dict:
  """The five checks, how many pass and the verdict."""
  thresholds = thresholds or THRESHOLDS
  checks = []
  for name, (cmp, limit) in thresholds.items():
    value = metrics.get(name, float("nan"))
    ok = bool(np.isfinite(value) and (value >= limit if cmp == ">=" else value <= limit))
    checks.append({"check": name, "value": value, "rule": f"{cmp} {limit}", "passed": ok})
  passed = sum(c["passed"] for c in checks)
  verdict = ("viable: fine-tune Moondream directly (LoRA on anomaly QA)" if passed >= 3 else
             "not viable: use AA-CLIP, optionally the hybrid AA-CLIP -> Moondream explanation path")
  return {"checks": checks, "passed": passed, "of": len(checks), "verdict": verdict}


# ------------------------------------------------------------------------------------ protocol

@dataclasses.dataclass
class Subject:
  """A model under diagnosis: answers, detect boxes and per-layer image embeddings of a batch."""
  name: str
  answer: Callable      # (images, question) -> [str]
  detect: Callable      # (images) -> [[box dict]]
  embeddings: Callable  # (images) -> [depth, B, D]
  tower: str = ""       # which vision tower the embeddings come from (for the plot legend)


def diagnose(subject: Subject, samples, batch_size: int = 8, progress=None) -> dict:
  """Run the protocol on `samples` (aajax.data.sample.Sample); returns metrics, per-layer silhouettes
  and the per-image records."""
  labels, classes, yes_claims, open_claims, ious, records, embs = [], [], [], [], [], [], []
  for start in range(0, len(samples), batch_size):
    chunk = samples[start:start + batch_size]
    images = [s.load_image() for s in chunk]
    yesno = subject.answer(images, YESNO_QUESTION)
    opened = subject.answer(images, OPEN_QUESTION)
    boxes = subject.detect(images)
    embs.append(np.asarray(subject.embeddings(images)))
    for s, im, y, o, bx in zip(chunk, images, yesno, opened, boxes):
      iou = box_iou(bx, s.load_mask(im.shape[:2])) if s.label else None
      labels.append(int(s.label))
      classes.append(s.class_name)
      yes_claims.append(claims_defect_yesno(y))
      open_claims.append(claims_defect_open(o))
      if iou is not None:
        ious.append(iou)
      records.append({"id": s.id, "label": int(s.label), "defect_type": s.defect_type, "yesno": y, "open": o,
                      "boxes": bx, "iou": iou})
    if progress:
      progress(f"{subject.name}: {min(start + batch_size, len(samples))}/{len(samples)} images")
  layers = np.concatenate(embs, axis=1)
  per_layer = [class_silhouette(layer, labels, classes) for layer in layers]
  both = bool(np.isfinite(per_layer).any())
  metrics = detection_metrics(labels, yes_claims)
  opened = detection_metrics(labels, open_claims)
  metrics.update({f"open_{k}": v for k, v in opened.items() if not k.startswith("n_")})
  metrics["localization_iou"] = float(np.mean(ious)) if ious else float("nan")
  metrics["silhouette"] = float(np.nanmax(per_layer)) if both else float("nan")
  metrics["silhouette_layer"] = int(np.nanargmax(per_layer)) + 1 if both else None
  return {"metrics": metrics, "silhouette_per_layer": per_layer, "records": records,
          "decision": decision(metrics), "tower": subject.tower}


# ------------------------------------------------------------------------------------ reporting

def write_report(results: dict, outdir: str, title: str = "Anomaly-awareness diagnostic", notes=()) -> dict:
  """results {subject: diagnose() output} -> report.md, metrics.json, answers.jsonl, silhouette.png."""
  os.makedirs(outdir, exist_ok=True)
  summary = {name: {"metrics": r["metrics"], "silhouette_per_layer": r["silhouette_per_layer"],
                    "decision": r["decision"]} for name, r in results.items()}
  _atomic(os.path.join(outdir, "metrics.json"), json.dumps(summary, indent=2, default=_json_default))
  lines = [json.dumps({"subject": name, **rec}, default=_json_default) for name, r in results.items()
           for rec in r["records"]]
  _atomic(os.path.join(outdir, "answers.jsonl"), "\n".join(lines) + "\n")
  _plot_silhouettes(results, os.path.join(outdir, "silhouette.png"))
  _atomic(os.path.join(outdir, "report.md"), _markdown(results, title, notes))
  return summary


def _json_default(x):
  if isinstance(x, (np.floating, np.integer)):
    return x.item()
  raise TypeError(type(x).__name__)


def _atomic(path: str, text: str) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)


def _fmt(v) -> str:
  if v is None or (isinstance(v, float) and not np.isfinite(v)):
    return "n/a"
  return f"{v:.3f}" if isinstance(v, float) else str(v)


def _markdown(results: dict, title: str, notes) -> str:
  names = list(results)
  rows = [("detection accuracy (yes/no)", "accuracy"), ("hallucination rate (yes/no)", "hallucination_rate"),
          ("miss rate (yes/no)", "miss_rate"), ("detection accuracy (open)", "open_accuracy"),
          ("hallucination rate (open)", "open_hallucination_rate"), ("miss rate (open)", "open_miss_rate"),
          ("localisation IoU of detect() boxes", "localization_iou"), ("best-layer silhouette", "silhouette"),
          ("best layer", "silhouette_layer")]
  first = results[names[0]]["metrics"]
  out = [f"# {title}", "", f"{first['n_normal']} normal and {first['n_anomalous']} anomalous images.", ""]
  out += list(notes) + ([""] if notes else [])
  out += ["| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
  out += [f"| {label} | " + " | ".join(_fmt(results[n]["metrics"].get(key)) for n in names) + " |"
          for label, key in rows]
  out += ["", "## Decision rule (Phase 0)", "",
          "Five checks; at least 3 passing: fine-tune Moondream directly; fewer: AA-CLIP (optionally the "
          "hybrid AA-CLIP -> Moondream path). Thresholds are this project's (the rule names none).", ""]
  out += ["| check | rule | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
  for i, check in enumerate(results[names[0]]["decision"]["checks"]):
    cells = []
    for n in names:
      c = results[n]["decision"]["checks"][i]
      cells.append(f"{_fmt(c['value'])} {'pass' if c['passed'] else 'fail'}")
    out.append(f"| {check['check']} | {check['rule']} | " + " | ".join(cells) + " |")
  out += ["| **passed** | >= 3 of 5 | " + " | ".join(
      f"**{results[n]['decision']['passed']}/5**" for n in names) + " |", ""]
  out += [f"- **{n}**: {results[n]['decision']['verdict']}" for n in names]
  out += ["", "![silhouette per layer](silhouette.png)", ""]
  return "\n".join(out)


def _plot_silhouettes(results: dict, path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6, 3.5))
  seen = set()
  for name, r in results.items():
    key = r.get("tower") or name
    if key in seen:   # subjects sharing a vision tower share its curve
      continue
    seen.add(key)
    values = r["silhouette_per_layer"]
    ax.plot(range(1, len(values) + 1), values, marker="o", label=key)
  ax.axhline(THRESHOLDS["silhouette"][1], color="grey", linestyle=":", linewidth=1)
  ax.set_xlabel("vision block")
  ax.set_ylabel("silhouette (normal vs anomalous)")
  ax.legend(fontsize=8)
  fig.tight_layout()
  tmp = path + ".tmp.png"
  fig.savefig(tmp, dpi=100)
  plt.close(fig)
  os.replace(tmp, path)
