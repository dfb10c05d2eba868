"""Evaluation: exact bounded-memory metrics, anomaly-map post-processing, reports."""
from aajax.eval.metrics import (aupro, auroc, average_precision, curves, f1_max, image_metrics,
                                pixel_metrics)
