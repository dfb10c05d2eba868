"""Readers for anomaly data sets in the layouts they are distributed in, and k-shot selection.

`load_samples(name, root, split, classes=None, **options) -> list[Sample]` for:

  synthetic   the embedded set (aajax.data.synthetic); root is ignored; options go to make_synthetic
  mvtec, mpdd <cls>/train/good/*, <cls>/test/<defect>/*, <cls>/ground_truth/<defect>/<stem>_mask.png
  visa        <cls>/Data/Images/{Normal,Anomaly}/*, <cls>/Data/Masks/Anomaly/*, and the split from
              split_csv/1cls.csv (columns object, split, label, image, mask; paths from the root)
  btad        <id>/train/ok/*, <id>/test/{ok,ko}/*, <id>/ground_truth/ko/<same stem>.* (any extension)
  brainmri, liverct, retina (BMAD)
              {train,valid,test}/good/img/*, {valid,test}/Ungood/img/*, .../Ungood/label/<same name>
  clinicdb, colondb, kvasir, cvc300 (polyp sets)
              images/*, masks/<same stem>.* -- every image anomalous, split "test"
  jsonl       AA-CLIP metadata: one JSON object per line with image_path, mask_path (anomalous
              only), label, class_name; paths relative to root. The file is options["meta"] or
              <root>/<split>.jsonl.

Splits are those of the data set ("train", "test"; BMAD also "valid"). AA-CLIP trains on the
*test* split of its auxiliary set ("full-shot"), so both are available everywhere they exist.
Only the directory listing happens here; images are decoded by the loader.
"""
import csv
import hashlib
import json
import os
import zlib

import numpy as np

from aajax.data.sample import Sample
from aajax.errors import DataError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def _images(folder):
  if not os.path.isdir(folder):
    return []
  return sorted(f for f in os.listdir(folder)
                if f.lower().endswith(IMAGE_EXTS) and not f.startswith("."))


def _check_root(root, layout):
  if root is None or not os.path.isdir(root):
    raise DataError(f"data root {root!r} does not exist (expected the {layout})")


def _by_stem(folder):
  return {os.path.splitext(f)[0]: os.path.join(folder, f) for f in _images(folder)}


def _rel(path, root):
  return os.path.relpath(path, root).replace(os.sep, "/")


# ------------------------------------------------------------------------------------ MVTec, MPDD

MVTEC_LAYOUT = ("MVTec AD layout: <root>/<class>/train/good/*.png, <root>/<class>/test/<defect>/*.png, "
                "<root>/<class>/ground_truth/<defect>/<name>_mask.png")


def _mvtec_like(root, split, classes, good="good", mask_suffix="_mask", layout=MVTEC_LAYOUT):
  _check_root(root, layout)
  found = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d, split)))
  if not found:
    raise DataError(f"no class folder with a '{split}' split under {root}; expected the {layout}")
  samples = []
  for cls in _select(found, classes, root):
    split_dir = os.path.join(root, cls, split)
    for defect in sorted(os.listdir(split_dir)):
      folder = os.path.join(split_dir, defect)
      if not os.path.isdir(folder):
        continue
      masks = _by_stem(os.path.join(root, cls, "ground_truth", defect))
      for f in _images(folder):
        path = os.path.join(folder, f)
        stem = os.path.splitext(f)[0]
        if defect == good:
          samples.append(Sample(path, None, 0, cls, "good", _rel(path, root)))
          continue
        mask = masks.get(stem + mask_suffix)
        if mask is None:
          raise DataError(f"no ground-truth mask for {path}: expected "
                          f"{os.path.join(root, cls, 'ground_truth', defect, stem + mask_suffix)}.png")
        samples.append(Sample(path, mask, 1, cls, defect, _rel(path, root)))
  return samples


def _select(found, classes, root):
  if classes is None:
    return found
  classes = [classes] if isinstance(classes, str) else list(classes)
  missing = [c for c in classes if c not in found]
  if missing:
    raise DataError(f"classes {missing} not found under {root}; available: {found}")
  return classes


def read_mvtec(root, split, classes=None):
  return _mvtec_like(root, split, classes)


def read_mpdd(root, split, classes=None):
  return _mvtec_like(root, split, classes, layout=MVTEC_LAYOUT.replace("MVTec AD", "MPDD (MVTec)"))


BTAD_LAYOUT = ("BTAD layout: <root>/<01|02|03>/train/ok/*, <root>/<id>/test/{ok,ko}/*, "
               "<root>/<id>/ground_truth/ko/<same name>")


def read_btad(root, split, classes=None):
  return _mvtec_like(root, split, classes, good="ok", mask_suffix="", layout=BTAD_LAYOUT)


# ------------------------------------------------------------------------------------------- VisA

VISA_LAYOUT = ("VisA layout: <root>/<class>/Data/Images/{Normal,Anomaly}/*.JPG, "
               "<root>/<class>/Data/Masks/Anomaly/*.png and <root>/split_csv/1cls.csv")


def read_visa(root, split, classes=None, split_csv="split_csv/1cls.csv"):
  _check_root(root, VISA_LAYOUT)
  csv_path = os.path.join(root, split_csv)
  if not os.path.isfile(csv_path):
    raise DataError(f"VisA split file {csv_path} not found; expected the {VISA_LAYOUT}")
  rows = []
  with open(csv_path, newline="") as f:
    reader = csv.DictReader(f)
    need = {"object", "split", "label", "image", "mask"}
    if not need <= set(reader.fieldnames or ()):
      raise DataError(f"{csv_path} has columns {reader.fieldnames}; expected {sorted(need)}")
    rows = [r for r in reader if r["split"] == split]
  if not rows:
    raise DataError(f"{csv_path} has no rows with split '{split}'")
  found = sorted({r["object"] for r in rows})
  keep = set(_select(found, classes, root))
  samples = []
  for r in rows:
    if r["object"] not in keep:
      continue
    path = os.path.join(root, r["image"])
    if not os.path.isfile(path):
      raise DataError(f"VisA image {path} listed in {csv_path} does not exist")
    anomalous = r["label"].strip().lower() == "anomaly"
    mask = os.path.join(root, r["mask"]) if anomalous and r["mask"].strip() else None
    if anomalous and (mask is None or not os.path.isfile(mask)):
      raise DataError(f"VisA mask for anomalous image {path} not found ({r['mask']!r})")
    samples.append(Sample(path, mask, int(anomalous), r["object"],
                          "anomaly" if anomalous else "good", r["image"]))
  return samples


# ------------------------------------------------------------------------------------ BMAD medical

BMAD_LAYOUT = ("BMAD layout: <root>/<split>/good/img/*.png, <root>/<split>/Ungood/img/*.png, "
               "<root>/<split>/Ungood/label/<same name>")


def _bmad(class_name):
  def read(root, split, classes=None):
    _check_root(root, BMAD_LAYOUT)
    _select([class_name], classes, root)
    good = os.path.join(root, split, "good", "img")
    bad = os.path.join(root, split, "Ungood", "img")
    if not os.path.isdir(good) and not os.path.isdir(bad):
      raise DataError(f"no '{split}' split under {root}: expected {good} or {bad} ({BMAD_LAYOUT})")
    samples = [Sample(os.path.join(good, f), None, 0, class_name, "good",
                      _rel(os.path.join(good, f), root)) for f in _images(good)]
    labels = _by_stem(os.path.join(root, split, "Ungood", "label"))
    for f in _images(bad):
      path = os.path.join(bad, f)
      mask = labels.get(os.path.splitext(f)[0])
      if mask is None:
        raise DataError(f"no label mask for {path} in {os.path.join(root, split, 'Ungood', 'label')}")
      samples.append(Sample(path, mask, 1, class_name, "Ungood", _rel(path, root)))
    return samples
  return read


# ------------------------------------------------------------------------------------- polyp sets

POLYP_LAYOUT = "polyp layout: <root>/images/*.png and <root>/masks/<same name>"


def _polyp(class_name):
  def read(root, split="test", classes=None):
    _check_root(root, POLYP_LAYOUT)
    _select([class_name], classes, root)
    if split != "test":
      raise DataError(f"{class_name} has only a 'test' split (every image anomalous), not {split!r}")
    images = os.path.join(root, "images")
    if not _images(images):
      raise DataError(f"no images in {images}; expected the {POLYP_LAYOUT}")
    masks = _by_stem(os.path.join(root, "masks"))
    samples = []
    for f in _images(images):
      mask = masks.get(os.path.splitext(f)[0])
      if mask is None:
        raise DataError(f"no mask for {os.path.join(images, f)} in {os.path.join(root, 'masks')}")
      path = os.path.join(images, f)
      samples.append(Sample(path, mask, 1, class_name, "polyp", _rel(path, root)))
    return samples
  return read


# ------------------------------------------------------------------------------------------ jsonl

def read_jsonl(root, split="full-shot", classes=None, meta=None):
  """AA-CLIP metadata: {"image_path", "mask_path"?, "label", "class_name"} per line."""
  meta = meta or os.path.join(root or ".", f"{split}.jsonl")
  if not os.path.isfile(meta):
    raise DataError(f"jsonl metadata {meta} not found (expected one JSON object per line with "
                    "image_path, mask_path, label, class_name)")
  samples = []
  with open(meta) as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        r = json.loads(line)
        image, label, cls = r["image_path"], int(float(r["label"])), str(r["class_name"])
      except (ValueError, KeyError, TypeError) as e:
        raise DataError(f"{meta} line {n}: not a record with image_path, label, class_name ({e})") from None
      mask = r.get("mask_path") or None
      if label and not mask:
        raise DataError(f"{meta} line {n}: anomalous image {image} has no mask_path")
      path = os.path.join(root, image) if root else image
      samples.append(Sample(path, os.path.join(root, mask) if (mask and root) else mask,
                            label, cls, r.get("specie_name") or ("good" if not label else "anomaly"),
                            image))
  if classes is not None:
    found = sorted({s.class_name for s in samples})
    keep = set(_select(found, classes, meta))
    samples = [s for s in samples if s.class_name in keep]
  return samples


def write_jsonl(samples, path, root=None):
  """Write samples as AA-CLIP jsonl (paths relative to root when given); atomic."""
  lines = []
  for s in samples:
    if not isinstance(s.image, str):
      raise DataError(f"sample {s.id} has an in-memory image; save it to files first")
    rel = (lambda p: _rel(p, root)) if root else (lambda p: p)
    rec = {"image_path": rel(s.image), "label": int(s.label), "class_name": s.class_name}
    if isinstance(s.mask, str):
      rec["mask_path"] = rel(s.mask)
    lines.append(json.dumps(rec))
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    f.write("\n".join(lines) + "\n")
  os.replace(tmp, path)


# --------------------------------------------------------------------------------------- registry

def read_synthetic(root, split, classes=None, **options):
  from aajax.data.synthetic import make_synthetic
  return list(make_synthetic(classes=classes, **options).split(split))


DATASETS = {
    "synthetic": read_synthetic,
    "mvtec": read_mvtec,
    "visa": read_visa,
    "btad": read_btad,
    "mpdd": read_mpdd,
    "brainmri": _bmad("Brain"),
    "liverct": _bmad("Liver"),
    "retina": _bmad("Retina"),
    "clinicdb": _polyp("ClinicDB"),
    "colondb": _polyp("ColonDB"),
    "kvasir": _polyp("Kvasir"),
    "cvc300": _polyp("CVC-300"),
    "jsonl": read_jsonl,
}


def load_samples(name: str, root, split: str = "test", classes=None, **options) -> list:
  """Samples of data set `name` under `root` (see the module doc for names and layouts)."""
  if name not in DATASETS:
    raise DataError(f"unknown data set {name!r}; known: {sorted(DATASETS)}")
  samples = DATASETS[name](root, split, classes, **options)
  if not samples:
    raise DataError(f"data set {name!r} at {root} has no images in split {split!r}")
  return samples


# ----------------------------------------------------------------------------------------- k-shot

def few_shot(samples, k: int, seed: int = 0) -> list:
  """k samples per class: k // 2 normal and k - k // 2 anomalous, drawn with a seeded generator
  per class (independent of the input order and of the other classes). Output keeps input order."""
  if k <= 0:
    raise DataError(f"k-shot needs k >= 1, got {k}")
  by_class = {}
  for i, s in enumerate(samples):
    by_class.setdefault(s.class_name, ([], []))[int(bool(s.label))].append(i)
  chosen = []
  for cls, groups in by_class.items():
    rng = np.random.default_rng([seed, zlib.crc32(cls.encode())])
    for label, want in ((0, k // 2), (1, k - k // 2)):
      pool = sorted(groups[label], key=lambda i: samples[i].id)
      if len(pool) < want:
        raise DataError(f"class {cls!r} has {len(pool)} {'anomalous' if label else 'normal'} "
                        f"samples, fewer than the {want} a {k}-shot set needs")
      chosen += [pool[j] for j in rng.choice(len(pool), size=want, replace=False)]
  return [samples[i] for i in sorted(chosen)]


def fingerprint(samples) -> str:
  """Short hash of the sample ids and labels, to record which files a run used."""
  h = hashlib.sha1()
  for s in samples:
    h.update(f"{s.id}\t{s.label}\t{s.class_name}\n".encode())
  return h.hexdigest()[:16]
