"""Tiny fake data sets in the real distribution layouts, written into a temporary folder."""
import csv
import json
import os

import numpy as np
from PIL import Image


def _img(path, size=(20, 16), seed=0, ext_mode="RGB"):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  rng = np.random.default_rng(seed)
  Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).convert(ext_mode).save(path)


def _mask(path, size=(20, 16), box=(2, 3, 6, 8), value=255):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  m = np.zeros((size[1], size[0]), np.uint8)
  m[box[0]:box[2], box[1]:box[3]] = value
  Image.fromarray(m).save(path)


def mvtec(root, classes=("bottle", "screw"), good_suffix=".png", defect="crack", good="good",
          mask_suffix="_mask"):
  for c in classes:
    for i in range(3):
      _img(f"{root}/{c}/train/{good}/{i:03d}{good_suffix}", seed=i)
    for i in range(2):
      _img(f"{root}/{c}/test/{good}/{i:03d}{good_suffix}", seed=10 + i)
      _img(f"{root}/{c}/test/{defect}/{i:03d}{good_suffix}", seed=20 + i)
      _mask(f"{root}/{c}/ground_truth/{defect}/{i:03d}{mask_suffix}.png")
  return root


def visa(root, classes=("candle", "pcb1")):
  rows = []
  for c in classes:
    for i in range(3):
      rel = f"{c}/Data/Images/Normal/{i:04d}.JPG"
      _img(f"{root}/{rel}", seed=i)
      rows.append((c, "train" if i < 2 else "test", "normal", rel, ""))
    for i in range(2):
      rel, mrel = f"{c}/Data/Images/Anomaly/{i:03d}.JPG", f"{c}/Data/Masks/Anomaly/{i:03d}.png"
      _img(f"{root}/{rel}", seed=30 + i)
      _mask(f"{root}/{mrel}", value=1 + i)   # VisA masks are not 0/255: any non-zero is a defect
      rows.append((c, "test", "anomaly", rel, mrel))
  os.makedirs(f"{root}/split_csv", exist_ok=True)
  with open(f"{root}/split_csv/1cls.csv", "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["object", "split", "label", "image", "mask"])
    w.writerows(rows)
  return root


def btad(root):
  for c in ("01", "02"):
    for i in range(2):
      _img(f"{root}/{c}/train/ok/{i:04d}.bmp", seed=i)
      _img(f"{root}/{c}/test/ok/{i:04d}.bmp", seed=5 + i)
      _img(f"{root}/{c}/test/ko/{i:04d}.bmp", seed=9 + i)
      _mask(f"{root}/{c}/ground_truth/ko/{i:04d}.png")
  return root


def bmad(root):
  for split in ("train", "test"):
    for i in range(2):
      _img(f"{root}/{split}/good/img/{i:05d}.png", seed=i)
  for i in range(3):
    _img(f"{root}/test/Ungood/img/{i:05d}_1.png", seed=40 + i)
    _mask(f"{root}/test/Ungood/label/{i:05d}_1.png")
  return root


def polyp(root):
  for i in range(3):
    _img(f"{root}/images/{i}.png", seed=i)
    _mask(f"{root}/masks/{i}.png")
  return root


def jsonl(root, path):
  polyp(root)
  with open(path, "w") as f:
    f.write(json.dumps({"image_path": "images/0.png", "mask_path": "masks/0.png", "label": 1.0,
                        "class_name": "Kvasir"}) + "\n")
    f.write(json.dumps({"image_path": "images/1.png", "mask_path": "", "label": 0,
                        "class_name": "Other"}) + "\n")
  return path
