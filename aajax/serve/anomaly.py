"""Anomaly scoring with a trained AA model (the `launch.infer` computation, one image per call).

`AnomalyScorer.score` runs on the engine thread (the device has one user): the image is resized and
normalised for the backbone, the class anchors come from the model's training classes or the
prompt ensemble of any object name (cached per name), and the answer holds the image score, the
largest pixel score, the threshold decision and the heatmap strip (image | region above the
threshold | heatmap) as a base64 PNG.
"""
import base64
import io
import os

import numpy as np
from PIL import Image


class AnomalyScorer:
  def __init__(self, path: str, model_id: str = ""):
    from aajax.anomaly import inference
    from aajax.anomaly.exported import load_trained
    # a model directory, or a launch.train work directory (its image-stage model)
    model_dir = path if os.path.exists(os.path.join(path, "config.json")) else os.path.join(path, "image", "model")
    self.trained = load_trained(model_dir)
    self.model_id = model_id or "aa-" + os.path.basename(os.path.normpath(path))
    self.size = self.trained.model.cfg.image_size
    self.predict = inference.make_probability_fn(self.trained.model)
    self._anchors: dict = {}

  @property
  def class_names(self) -> list:
    return list(self.trained.class_names)

  def anchors(self, class_name: str):
    if class_name not in self._anchors:
      self._anchors[class_name] = np.asarray(self.trained.class_anchors(class_name))
    return self._anchors[class_name]

  def score(self, pixels: np.ndarray, class_name, threshold, heatmap: bool) -> dict:
    from aajax.data.transforms import preprocess
    from aajax.eval.report import heatmap_strip
    class_name = class_name or self.trained.class_names[0]
    batch = preprocess(pixels, self.size, self.trained.norm)[None]
    pix, img = self.predict(self.trained.params, self.anchors(class_name)[None], batch)
    pix, score = np.asarray(pix)[0], float(np.asarray(img)[0])
    out = {"model": self.model_id, "class_name": class_name, "image_score": score,
           "max_pixel_score": float(pix.max())}
    if threshold is not None:
      out.update(anomalous=bool(score > threshold), anomalous_pixels=float((pix > threshold).mean()))
    if heatmap:
      shown = (preprocess(pixels, self.size, "none").clip(0, 1) * 255).astype(np.uint8)
      strip = heatmap_strip(shown, None if threshold is None else pix > threshold, pix, 0.0, 1.0)
      buf = io.BytesIO()
      Image.fromarray(strip).save(buf, format="PNG")
      out["heatmap_png_base64"] = base64.b64encode(buf.getvalue()).decode()
    return out
