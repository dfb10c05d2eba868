"""Anomaly data: the sample record, readers of real layouts, the synthetic defect set, transforms,
the host-side loader and TFDS builders."""
from aajax.data.datasets import DATASETS, few_shot, fingerprint, load_samples, write_jsonl
from aajax.data.loader import Loader
from aajax.data.sample import Sample, read_image, read_mask
from aajax.data.synthetic import make_synthetic
from aajax.data.transforms import NORMS, preprocess
