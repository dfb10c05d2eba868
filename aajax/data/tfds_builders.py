"""TFDS builders that prepare the anomaly data sets to ArrayRecord, and a Grain pipeline that reads
them back through `tfds.data_source` -- no TensorFlow anywhere.

One builder, `aajax_anomaly`, with a config per data set name of aajax.data.datasets ("mvtec",
"visa", "btad", "mpdd", "brainmri", ..., "synthetic"). The manual dir is the data set's folder in
its distribution layout, or its archive (.tar[.gz|.xz|.bz2], .zip; or a folder holding only that
archive), extracted once under <data_dir>/extracted/<name> (for "synthetic", none); the records come from the same readers
as `load_samples`, so layouts are checked and reported the same way. Each split found in the folder
becomes a TFDS split. Every record holds the encoded image (the original file bytes, no
re-encoding), a binary mask (PNG, {0,1}; all zero for normal images), label, class name, defect
type and id. The class list is stored in the data set's metadata.

Without TensorFlow, `tfds.features.Image` cannot encode numpy arrays, so images are given as file
paths (stored as is) or PIL images (encoded by PIL).

  prepare("mvtec", manual_dir="/data/mvtec_anomaly_detection", data_dir="~/tensorflow_datasets")
  source = data_source("mvtec", data_dir, "test")          # random access, decodes on read
  for batch in grain_batches(source, batch_size=8, image_size=518, norm="clip"): ...
"""
import os

import numpy as np
from PIL import Image

from aajax.data import transforms
from aajax.data.datasets import DATASETS, load_samples
from aajax.errors import DataError, InputError

BUILDER_NAME = "aajax_anomaly"
_SPLITS = ("train", "valid", "test")


def _tfds():
  import tensorflow_datasets as tfds
  return tfds


def _builder_class():
  """Defined lazily so that importing aajax.data does not import TFDS; registered once."""
  global _BUILDER
  if _BUILDER is not None:
    return _BUILDER
  tfds = _tfds()

  class AajaxAnomaly(tfds.core.GeneratorBasedBuilder):
    """Anomaly detection sets: image, binary mask, label, class, defect type."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=n, description=f"{n} in its distribution layout")
                       for n in DATASETS if n != "jsonl"]
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Download the data set from its owner (MVTec AD, VisA, BTAD, MPDD, BMAD, the polyp sets) "
        "and pass its extracted root folder as the manual dir. The synthetic set needs none.")

    def _info(self):
      f = tfds.features
      return tfds.core.DatasetInfo(
          builder=self,
          description="Anomaly detection images with pixel masks, read by aajax.data.",
          features=f.FeaturesDict({
              "image": f.Image(shape=(None, None, 3)),
              "mask": f.Image(shape=(None, None, 1), encoding_format="png"),
              "label": f.ClassLabel(names=["good", "anomalous"]),
              "class_name": f.Text(),
              "defect_type": f.Text(),
              "id": f.Text(),
          }),
          metadata=tfds.core.MetadataDict(),
      )

    def _split_generators(self, dl_manager):
      name = self.builder_config.name
      root = None
      if name != "synthetic":
        root = os.fspath(dl_manager.manual_dir)
      splits, classes = {}, set()
      for split in _SPLITS:
        try:
          samples = load_samples(name, root, split)
        except DataError:
          continue  # a split the data set does not have
        classes |= {s.class_name for s in samples}
        splits[split] = self._generate_examples(samples)
      if not splits:
        _check_layout(name, root)
      self.info.metadata["class_names"] = sorted(classes)
      return splits

    def _generate_examples(self, samples):
      for s in samples:
        image = s.load_image()
        mask = s.load_mask(image.shape[:2])
        # File bytes when there is a file (no re-encoding); PIL images otherwise.
        encoded = s.image if isinstance(s.image, str) and _rgb_file(s.image) else Image.fromarray(image)
        yield s.id, {"image": encoded, "mask": Image.fromarray(mask),
                     "label": int(s.label), "class_name": s.class_name,
                     "defect_type": s.defect_type, "id": s.id}

  _BUILDER = AajaxAnomaly
  return _BUILDER


_BUILDER = None


def _rgb_file(path):
  """Stored as is only when the file already decodes to 8-bit RGB; else re-encoded as PNG."""
  with Image.open(path) as im:
    return im.mode == "RGB" and im.format in ("PNG", "JPEG")


def builder(name: str, data_dir: str):
  if name not in DATASETS or name == "jsonl":
    raise DataError(f"no TFDS config {name!r}; known: {sorted(n for n in DATASETS if n != 'jsonl')}")
  return _builder_class()(config=name, data_dir=os.path.expanduser(data_dir),
                          file_format="array_record")


def prepare(name: str, manual_dir, data_dir: str):
  """Build the ArrayRecord files of data set `name` from its folder `manual_dir` into data_dir."""
  tfds = _tfds()
  b = builder(name, data_dir)
  if name != "synthetic":
    if manual_dir is None or not os.path.exists(manual_dir):
      raise DataError(f"manual dir {manual_dir!r} for {name} does not exist")
    manual_dir = extract_archive(manual_dir, os.path.join(os.path.expanduser(data_dir), "extracted", name))
    _check_layout(name, manual_dir)
  b.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=manual_dir, download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS))
  return b


ARCHIVE_EXTS = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2", ".zip")


def extract_archive(manual_dir: str, dest: str) -> str:
  """The data set folder for `manual_dir`: itself if it is an extracted tree; else the archive it
  is (or the only thing it holds) extracted once into `dest`, descending into a lone top folder."""
  path = manual_dir
  if os.path.isdir(path):
    entries = [e for e in os.listdir(path) if not e.startswith(".")]
    if len(entries) != 1 or not entries[0].lower().endswith(ARCHIVE_EXTS):
      return manual_dir
    path = os.path.join(path, entries[0])
  if not path.lower().endswith(ARCHIVE_EXTS):
    raise DataError(f"{path} is neither a folder nor an archive ({', '.join(ARCHIVE_EXTS)})")
  if not os.path.isdir(dest):
    import tarfile
    import zipfile
    tmp = f"{dest}.incomplete{os.getpid()}"
    try:
      if path.lower().endswith(".zip"):
        with zipfile.ZipFile(path) as z:
          z.extractall(tmp)
      else:
        with tarfile.open(path) as t:
          t.extractall(tmp, filter="data")   # no absolute paths, links out, devices
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, tarfile.TarError) as e:
      import shutil
      shutil.rmtree(tmp, ignore_errors=True)
      raise DataError(f"cannot extract {path}: {e}") from None
    os.replace(tmp, dest)
  entries = [e for e in os.listdir(dest) if not e.startswith(".")]
  if len(entries) == 1 and os.path.isdir(os.path.join(dest, entries[0])):
    return os.path.join(dest, entries[0])
  return dest


def _check_layout(name, root):
  """Fail with the reader's message (which names the expected layout) before TFDS starts."""
  for split in _SPLITS:
    try:
      load_samples(name, root, split)
      return
    except DataError:
      continue
  load_samples(name, root, "test")


def data_source(name: str, data_dir: str, split: str):
  """Random-access source of records {image uint8 [H,W,3], mask uint8 [H,W,1], label, class_name
  (bytes), ...} via tfds.data_source; DataError if the data set was not prepared."""
  tfds = _tfds()
  _builder_class()
  path = os.path.join(os.path.expanduser(data_dir), BUILDER_NAME, name)
  if not os.path.isdir(path):
    raise DataError(f"{name} is not prepared under {data_dir} (run aajax.data.tfds_builders.prepare)")
  return tfds.data_source(f"{BUILDER_NAME}/{name}", split=split, data_dir=os.path.expanduser(data_dir),
                          download=False)


def class_names(name: str, data_dir: str) -> list:
  return list(builder(name, data_dir).info.metadata["class_names"])


# ------------------------------------------------------------------------------------------ grain

class _Preprocess:
  """Record -> model inputs, with the loader's transforms (picklable for Grain workers)."""

  def __init__(self, image_size, norm, class_index, augment, seed):
    self.image_size, self.norm, self.class_index = image_size, norm, class_index
    self.augment, self.seed = augment, seed

  def __call__(self, index, record):
    image = np.asarray(record["image"], np.uint8)
    mask = np.asarray(record["mask"])[..., 0]
    if self.augment:
      rng = np.random.default_rng([self.seed, 2, index])
      image = transforms.color_jitter(image, rng)
    x = transforms.preprocess(image, self.image_size, self.norm)
    m = transforms.resize_mask(mask, self.image_size).astype(np.float32)
    if self.augment:
      x, m = transforms.random_geometry(x, m, rng)
    cls = record["class_name"]
    cls = cls.decode() if isinstance(cls, bytes) else str(cls)
    if cls not in self.class_index:
      raise DataError(f"record of class {cls!r} not in class_names {list(self.class_index)}")
    rid = record["id"]
    return {"images": x, "masks": m, "labels": np.int32(record["label"]),
            "class_ids": np.int32(self.class_index[cls]),
            "ids": rid.decode() if isinstance(rid, bytes) else str(rid)}


def _stack(items):
  return {k: np.stack([it[k] for it in items]) if k != "ids" else
          np.asarray([it[k] for it in items], object) for k in items[0]}


def grain_dataset(source, batch_size: int, image_size: int, class_names, norm="clip",
                  shuffle: bool = False, seed: int = 0, augment: bool = False,
                  process_index: int = 0, process_count: int = 1, drop_remainder=None):
  """Grain pipeline over a data source: every process reads its own interleaved shard
  (records p, p + process_count, ...), shuffles it per epoch when training (endless), batches it
  (`batch_size` is per process here). Iterate `.to_iter_dataset()`; its iterator's
  get_state()/set_state() give an exact resume position."""
  import grain
  if not 0 <= process_index < process_count:
    raise InputError(f"process_index {process_index} not in [0, {process_count})")
  ds = grain.MapDataset.source(source)[process_index::process_count]
  if shuffle:
    ds = ds.shuffle(seed=seed).repeat()
  prep = _Preprocess(image_size, norm, {c: i for i, c in enumerate(class_names)}, augment, seed)
  ds = ds.map_with_index(prep)
  drop = shuffle if drop_remainder is None else drop_remainder
  return ds.batch(batch_size, drop_remainder=drop, batch_fn=_stack)
