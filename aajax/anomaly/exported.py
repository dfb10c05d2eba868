"""Loading a trained AA model directory (written at the end of stage "image") for inference."""
import dataclasses
import json
import os

import numpy as np

from aajax.anomaly import recipe
from aajax.anomaly.model import AAModel
from aajax.anomaly.tasks import ANCHORS_FILE, TOKENIZER_FILE
from aajax.errors import CheckpointError


@dataclasses.dataclass
class TrainedAA:
  model: AAModel
  params: dict
  tokenizer: object
  norm: str
  class_names: list      # the training classes, with their anchors
  real_names: list
  domains: list
  anchors: np.ndarray    # [C, E, 2]

  def class_index(self, name: str) -> int | None:
    return self.class_names.index(name) if name in self.class_names else None

  def class_anchors(self, class_name: str) -> np.ndarray:
    """[E, 2] anchors: the stored ones of a training class, else the prompt ensemble of the name."""
    from aajax.anomaly import objectives
    from aajax.anomaly.prompts import prompt_ids
    from aajax.errors import InputError
    i = self.class_index(class_name)
    if i is not None:
      return self.anchors[i]
    if self.model.cfg.cross_attention:
      raise InputError(f"class {class_name!r} is not one of the model's training classes {self.class_names}; "
                       "a cross-attention model needs a training class (its anchors depend on image context)")
    ids = prompt_ids(self.tokenizer, [class_name])
    return np.asarray(objectives.anchor_table(self.model, self.params, ids))[0]


def load_trained(path: str) -> TrainedAA:
  from aajax.model_dir import load_model
  model, params = load_model(path, expect_kind="aa")
  try:
    with open(os.path.join(path, TOKENIZER_FILE)) as f:
      spec = json.load(f)
    stored = np.load(os.path.join(path, ANCHORS_FILE))
  except (OSError, ValueError) as e:
    raise CheckpointError(f"{path} is an AA model directory without its training metadata "
                          f"({TOKENIZER_FILE}, {ANCHORS_FILE}): {e}") from None
  return TrainedAA(model, params, recipe.tokenizer_from_spec(spec), spec.get("norm", model.cfg.backbone.family),
                   [str(x) for x in stored["class_names"]], [str(x) for x in stored["real_names"]],
                   [str(x) for x in stored["domains"]], np.asarray(stored["anchors"]))


def model_dir_from_flags(program: str, workdir: str, model: str) -> str:
  """--model, or the image-stage model of --workdir; exits with a one-line message if neither is given.
  Also quiets absl/orbax INFO logging unless the user asked for a verbosity."""
  import sys
  from absl import flags, logging
  if not flags.FLAGS["verbosity"].present:   # orbax logs every restore at INFO
    logging.set_verbosity(logging.WARNING)
  if not model and not workdir:
    sys.exit(f"{program}: give --workdir (a launch.train run) or --model (an AA model directory)")
  return model or os.path.join(workdir, "image", "model")
