"""The `data` section of an AA run config: which samples train and evaluate, and their prompts.

    data.name        "synthetic" (embedded, no download) or a reader of aajax.data.datasets
                     ("mvtec", "visa", "btad", "mpdd", "brainmri", "liverct", "retina", "jsonl")
    data.root        the data set's folder (real data sets)
    data.classes     classes to use; () = all
    data.train_split / eval_split
    data.shots       k-shot training (k/2 normal + k/2 anomalous per class); 0 = every training image
    data.eval_name / eval_root / eval_classes   evaluate on another data set ("" = the training one),
                     e.g. train on VisA, evaluate on MVTec (the zero-shot protocol)
    data.domain      "Industrial" | "Medical" for every class, or "" (each class's own domain)
    data.synthetic   sizes of the synthetic set (seed, image_size, n_train, n_test, anomaly_fraction)
"""
import dataclasses

import ml_collections

from aajax.errors import ConfigError


def data_defaults() -> ml_collections.ConfigDict:
  d = ml_collections.ConfigDict()
  d.name = "synthetic"
  d.root = ""
  d.classes = ()
  d.train_split = "train"
  d.eval_split = "test"
  d.shots = 0
  d.shot_seed = 0
  d.eval_name = ""
  d.eval_root = ""
  d.eval_classes = ()
  d.domain = ""
  d.augment = True
  d.norm = ""              # "" = the backbone family's normalisation
  d.synthetic = ml_collections.ConfigDict(
      {"seed": 0, "image_size": 256, "n_train": 32, "n_test": 32, "anomaly_fraction": 0.5})
  return d


@dataclasses.dataclass
class Split:
  """Samples of one split with the class order that indexes the prompt table."""
  dataset: str
  samples: list
  class_names: list
  real_names: list
  domains: list            # "Industrial" | "Medical" per class: the test blur and image-score rule


def _load(name: str, root: str, split: str, classes, synthetic) -> tuple[list, dict, dict]:
  """(samples, {class: real name}, {class: domain})."""
  from aajax.data import class_names
  from aajax.data.datasets import load_samples
  classes = tuple(classes) or None
  if name == "synthetic":
    options = synthetic.to_dict()
  else:
    options = {}
    if not root:
      raise ConfigError(f"data set {name!r} needs a root folder (data.root / data.eval_root)")
  samples = load_samples(name, root, split, classes, **options)
  names = {s.class_name for s in samples}
  table = None if name == "jsonl" else name   # jsonl metadata mixes data sets: look names up by class
  return (samples, {c: class_names.real_name(c, table) for c in names},
          {c: class_names.domain(c, table) for c in names})


def _split(name, root, split, classes, synthetic, domain="") -> Split:
  samples, real, domains = _load(name, root, split, classes, synthetic)
  class_names = list(dict.fromkeys(s.class_name for s in samples))
  return Split(name, samples, class_names, [real[c] for c in class_names],
               [domain or domains[c] for c in class_names])


def train_split(d) -> Split:
  split = _split(d.name, d.root, d.train_split, d.classes, d.synthetic, d.domain)
  if d.shots:
    from aajax.data.datasets import few_shot
    split.samples = few_shot(split.samples, d.shots, d.shot_seed)
  return split


def eval_split(d) -> Split:
  name = d.eval_name or d.name
  same = not d.eval_name or d.eval_name == d.name
  root = d.eval_root or (d.root if same else "")
  classes = d.eval_classes or (d.classes if same else ())
  return _split(name, root, d.eval_split, classes, d.synthetic, d.domain)


def norm_for(d, family: str) -> str:
  return d.norm or family
