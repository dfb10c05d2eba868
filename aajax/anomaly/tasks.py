"""AA-CLIP's two training stages as a task of the generic trainer (`aajax.train`).

Stage "text": the text adapters (+ the cross-attention variant) learn from frozen DPAM features of
  the training images. Trainable: `text_adapters_*`, `text_proj`, `cross_attn`.
Stage "image": the text path is frozen at the stage-1 export; the anchors of the training classes
  are computed once; the image adapters and projectors learn against them. Gradients pass through
  the frozen vision blocks after the last adapter: set `model.remat` in `stage_image` to
  rematerialise them instead of keeping their activations.

The frozen backbone never reaches the optimizer: only the stage's groups are `trainable`.
At the end of stage "image" the whole model is exported as a model directory (kind "aa") with its
tokenizer spec and anchors, ready for `launch.infer` and `launch.eval`.
"""
import json
import os

import jax
import numpy as np

from aajax.anomaly import data as aa_data
from aajax.anomaly import evaluate as aa_eval
from aajax.anomaly import objectives, recipe
from aajax.anomaly.model import AAModel
from aajax.anomaly.prompts import prompt_ids
from aajax.errors import ConfigError
from aajax.train import tasks

EXPORTED_MODEL = "model"   # <stage workdir>/model: the full AA model directory
ANCHORS_FILE = "anchors.npz"
TOKENIZER_FILE = "tokenizer.json"


class AATask:
  stages = ("text", "image")

  # -- setup -----------------------------------------------------------------------------------
  def init(self, rng, config):
    if config.stage not in self.stages:
      raise ConfigError(f"AA stage {config.stage!r} unknown; stages: {self.stages}")
    self.config = config
    self.cfg = recipe.aa_config(config.model)
    self.model = AAModel(self.cfg)
    self.split = aa_data.train_split(config.data)
    self.norm = aa_data.norm_for(config.data, self.cfg.backbone.family)
    self.tokenizer = recipe.tokenizer_for(self.cfg, config.model)
    self.prompt_ids = prompt_ids(self.tokenizer, self.split.real_names)
    params = recipe.initial_params(self.cfg, config.model, rng)
    if config.stage == "text":
      return objectives.split_params(params, "text")
    text_export = config.get("exports", {}).get("text")
    if not text_export:
      raise ConfigError("stage 'image' needs the exported text stage (run stage 'text' first)")
    from aajax.train.checkpoint import load_exported
    params = objectives.merge(params, load_exported(text_export))
    frozen, trainable = objectives.split_params(params, "image")
    anchors = aa_eval.anchors_for(self.model, params, self.tokenizer, self.split, self._eval_loader)
    return {"params": frozen, "anchors": anchors}, trainable

  def _eval_loader(self, samples, class_names, batch_size=None):
    from aajax.data.loader import Loader
    return Loader(samples, batch_size or self.config.eval.batch_size, self.cfg.image_size, norm=self.norm,
                  shuffle=False, class_names=class_names)

  # -- training --------------------------------------------------------------------------------
  def loss_fn(self, trainable, frozen, batch, rng):
    c = self.config
    if c.stage == "text":
      return objectives.stage1_loss(self.model, objectives.merge(frozen, trainable), batch, self.prompt_ids, rng,
                                    c.ortho_weight, c.last_level_only)
    return objectives.stage2_loss(self.model, objectives.merge(frozen["params"], trainable), batch,
                                  frozen["anchors"])

  def train_data(self, config, start_state):
    from aajax.data.loader import Loader
    loader = Loader(self.split.samples, config.batch_size, self.cfg.image_size, norm=self.norm, shuffle=True,
                    seed=config.seed, augment=config.data.augment, process_index=jax.process_index(),
                    process_count=jax.process_count(), class_names=self.split.class_names)
    if start_state:
      loader.set_state(start_state)
    return TrainStream(loader)

  # -- evaluation and export -------------------------------------------------------------------
  def evaluate(self, trainable, frozen, config, workdir):
    """Stage "image": the full protocol on the evaluation split (tables, heatmaps, curves)."""
    if config.stage != "image":
      return {}
    params = objectives.merge(frozen["params"], trainable)
    split = aa_data.eval_split(config.data)
    if split.class_names == self.split.class_names and split.dataset == self.split.dataset:
      table = frozen["anchors"]
    else:
      table = aa_eval.anchors_for(self.model, params, self.tokenizer, split, self._eval_loader)
    loader = self._eval_loader(split.samples, split.class_names)
    outdir = os.path.join(workdir, "eval")
    summary = aa_eval.evaluate(self.model, params, table, loader, split.domains, outdir,
                               config.eval.heatmaps_per_class)
    return {k: float(v) for k, v in summary.items() if isinstance(v, (int, float, np.floating))}

  def export(self, trainable, frozen, config, workdir):
    if config.stage != "image":
      return
    from aajax.train.mesh import to_host
    # every process: arrays sharded over devices of several processes are gathered collectively
    params, anchors = to_host((objectives.merge(frozen["params"], trainable), frozen["anchors"]))
    if jax.process_index() != 0:
      return
    write_model(os.path.join(workdir, EXPORTED_MODEL), self.cfg, params, recipe.tokenizer_spec(self.cfg, config.model),
                self.split, anchors, self.norm)


class TrainStream:
  """The loader as the trainer's iterator: the arrays a training step reads, and the loader's position."""
  KEYS = ("images", "masks", "labels", "class_ids")

  def __init__(self, loader):
    self.loader = loader
    self._it = iter(loader)

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    batch = next(self._it)
    return {k: batch[k] for k in self.KEYS}

  def get_state(self) -> dict:
    return self.loader.get_state()

  def set_state(self, state: dict) -> None:
    self.loader.set_state(state)
    self._it = iter(self.loader)


def write_model(path: str, cfg, params, tokenizer_spec: dict, split, anchors, norm: str):
  """The AA model directory plus what inference needs besides weights: the tokenizer, the training
  classes' anchors and prompts, the normalisation and each class's domain."""
  from aajax.model_dir import save_model
  save_model(path, "aa", cfg.to_dict(), recipe.as_numpy(params), source="launch.train", overwrite=True)
  with open(os.path.join(path, TOKENIZER_FILE), "w") as f:
    json.dump({**tokenizer_spec, "norm": norm}, f, indent=2)
  np.savez(os.path.join(path, ANCHORS_FILE), anchors=anchors, class_names=np.asarray(split.class_names),
           real_names=np.asarray(split.real_names), domains=np.asarray(split.domains))


def aa_defaults(config):
  """Task fields of an AA run config (the train fields come from `train_defaults()`)."""
  import ml_collections
  config.task = "aa"
  config.stages = ("text", "image")
  config.model = recipe.model_defaults()
  config.data = aa_data.data_defaults()
  config.eval = ml_collections.ConfigDict({"batch_size": 8, "heatmaps_per_class": 4})
  config.ortho_weight = 0.1
  config.last_level_only = False   # the released stage-1 quirk: only the last level back-propagates
  config.optimizer = "adam"
  config.b1, config.b2 = 0.5, 0.999
  return config


def paper_recipe(config, text_steps: int = 5 * 136, image_steps: int = 15 * 1081):
  """The released schedule: stage 1 batch 16, Adam lr 1e-5; stage 2 batch 2, lr 5e-4 halved per step at
  16k and 32k; betas (0.5, 0.999). Defaults are VisA full-shot (136 and 1081 steps an epoch, 5 text
  epochs, the reported image epoch 15). Stage 2 rematerialises the frozen blocks gradients cross."""
  import ml_collections
  config.stage_text = ml_collections.ConfigDict(dict(steps=text_steps, batch_size=16, lr=1e-5, ckpt_every=136))
  config.stage_image = ml_collections.ConfigDict(dict(
      steps=image_steps, batch_size=2, lr=5e-4, schedule="multistep", milestones=(16000, 32000), gamma=0.5,
      ckpt_every=1081, best_metric="pixel_auroc", model=ml_collections.ConfigDict({"remat": True})))
  config.data.name, config.data.train_split = "visa", "test"   # VisA full-shot = its 1-class test split
  config.data.eval_name = "mvtec"
  return config


tasks.register("aa", AATask)
