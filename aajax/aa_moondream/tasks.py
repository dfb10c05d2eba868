"""AA-Moondream's two training stages as a task of the generic trainer (`aajax.train`).

Stage "anomaly" (stage A): residual adapters, level projections, learned anchors and level weights
  on Moondream's frozen vision tower, with AA-CLIP's stage-2 loss family; evaluated with the AA
  protocol (per-class pixel / image metrics, heatmaps). Trainable: `image_adapters_*`, `seg_proj_*`,
  `det_proj`, `anchors`, `level_weights`.
Stage "qa" (stage B): LoRA on the decoder for anomaly question answering built from the masks
  (`aajax.aa_moondream.qa`), half of the items conditioned on the anomaly result of the stage-A head
  (or of a trained AA model: `qa.source = "aa"`, the hybrid path). Trainable: the LoRA tree only.

The batches, steps, mesh and checkpoints are the trainer's, as for the AA task; each stage exports a
model directory (`aajax.aa_moondream.exported`) that `explain`, `launch.diagnose` and the next stage
read.
"""
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from aajax.aa_moondream import exported, objectives, qa as qa_lib, qa_model, recipe, sources
from aajax.aa_moondream.model import AAMoondream, init_params, split_params
from aajax.anomaly import data as aa_data
from aajax.anomaly.tasks import TrainStream
from aajax.errors import ConfigError
from aajax.nn import lora as lora_lib
from aajax.train import tasks

NORM = "siglip"   # Moondream's crops are normalised to [-1, 1]


class AAMoondreamTask:
  stages = ("anomaly", "qa")

  def init(self, rng, config):
    if config.stage not in self.stages:
      raise ConfigError(f"AA-Moondream stage {config.stage!r} unknown; stages: {self.stages}")
    anomaly_export = config.get("exports", {}).get("anomaly")
    if config.stage == "qa" and not anomaly_export and config.qa.source == "head":
      raise ConfigError("stage 'qa' with qa.source='head' needs the exported anomaly stage (run stage 'anomaly' first)")
    self.config = config
    self.cfg = recipe.aa_config(config.model)
    self.model = AAMoondream(self.cfg)
    self.split = aa_data.train_split(config.data)
    self.base = recipe.base_params(self.cfg, config.model)
    self.tokenizer = recipe.tokenizer_for(self.cfg, config.model)
    head_rng, lora_rng = jax.random.split(rng)
    if config.stage == "anomaly":
      params = jax.jit(init_params, static_argnums=0)(self.cfg, head_rng)
      frozen, trainable = split_params({**params, "vision": self.base["vision"]})
      return frozen, trainable
    from aajax.train.checkpoint import load_exported
    self.head = load_exported(anomaly_export) if anomaly_export else None
    self.source = sources.make_source(self.source_spec(), self.model, self.head_params())
    self.contexts = self.contexts_for(self.split.samples)
    lora = lora_lib.init_lora(lora_rng, self.base["text"], self.cfg.lora)
    return {"moondream": self.base}, {"lora": lora}

  def source_spec(self) -> dict:
    q = self.config.qa
    if q.source == "head":
      return {"kind": "head"}
    return {"kind": q.source, "path": q.aa_model, "class_name": q.class_name}

  def head_params(self):
    return None if self.head is None else {**self.head, "vision": self.base["vision"]}

  def contexts_for(self, samples) -> list:
    scores, maps = self.source([s.load_image() for s in samples])
    q = self.config.qa
    return [sources.context_of(s, m, q.map_threshold, q.max_boxes) for s, m in zip(scores, maps)]

  # -- training --------------------------------------------------------------------------------
  def loss_fn(self, trainable, frozen, batch, rng):
    if self.config.stage == "anomaly":
      return objectives.anomaly_loss(self.model, {**frozen, **trainable}, batch)
    return qa_model.sequence_losses(self.cfg.moondream, frozen["moondream"], batch["images"], batch,
                                    trainable["lora"], self.cfg.lora)

  def _loader(self, samples, batch_size, shuffle, seed=0, augment=False, class_names=None):
    from aajax.data.loader import Loader
    return Loader(samples, batch_size, self.cfg.image_size, norm=NORM, shuffle=shuffle, seed=seed, augment=augment,
                  process_index=jax.process_index(), process_count=jax.process_count(),
                  class_names=class_names or self.split.class_names)

  def train_data(self, config, start_state):
    if config.stage == "anomaly":
      stream = TrainStream(self._loader(self.split.samples, config.batch_size, True, config.seed, config.data.augment))
    else:   # QA targets come from the masks as they are: no geometric augmentation
      loader = self._loader(self.split.samples, config.batch_size, True, config.seed)
      stream = QAStream(loader, self.items_builder(config.seed))
    if start_state:
      stream.set_state(start_state)
    return stream

  def items_builder(self, seed: int):
    return ItemsBuilder(self.tokenizer, qa_lib.Bins.of(self.cfg.moondream.region), self.config.qa,
                        self.contexts, seed)

  # -- evaluation and export -------------------------------------------------------------------
  def evaluate(self, trainable, frozen, config, workdir):
    split = aa_data.eval_split(config.data)
    if config.stage == "anomaly":
      return self._evaluate_anomaly({**frozen, **trainable}, split, config, workdir)
    return self._evaluate_qa(trainable, frozen, split, config)

  def _evaluate_anomaly(self, params, split, config, workdir):
    from aajax.anomaly.evaluate import evaluate_predictions
    from aajax.eval import maps as maps_lib
    fn = jax.jit(lambda p, x: self.model.apply({"params": p}, x, method=AAMoondream.score_maps))

    def predict_for(domain):
      def predict(images, class_ids):
        pix, score = fn(params, images)
        return maps_lib.blur_grid(np.asarray(pix), domain), np.asarray(score)
      return predict

    loader = self._loader(split.samples, config.eval.batch_size, False, class_names=split.class_names)
    summary = evaluate_predictions({d: predict_for(d) for d in set(split.domains)}, self.cfg.image_size, loader,
                                   split.domains, os.path.join(workdir, "eval"), config.eval.heatmaps_per_class)
    return {k: float(v) for k, v in summary.items() if isinstance(v, (int, float, np.floating))}

  def _evaluate_qa(self, trainable, frozen, split, config):
    """Teacher-forced QA loss and answer accuracy on the evaluation split (fixed items)."""
    return qa_metrics(self, trainable["lora"], frozen["moondream"], split.samples, config.eval.batch_size,
                      config.qa.eval_items)

  def export(self, trainable, frozen, config, workdir):
    if jax.process_index() != 0:
      return
    if config.stage == "anomaly":
      head, lora, source = trainable, None, {"kind": "head"}
    else:
      head, lora, source = self.head, trainable["lora"], self.source_spec()
    qa = {"max_boxes": int(config.qa.max_boxes), "map_threshold": float(config.qa.map_threshold)}
    exported.write_model(os.path.join(workdir, exported.MODEL_DIR), self.cfg, recipe.base_spec(config.model),
                         self.base, head if head is not None else {}, lora, self.tokenizer, source, qa)


class ItemsBuilder:
  """QA items of a batch of samples: one random kind per row, the anomaly context on a random half."""

  def __init__(self, tokenizer, bins, q, contexts, seed: int):
    self.tok, self.bins, self.q, self.contexts, self.seed = tokenizer, bins, q, contexts, seed
    unknown = [k for k in q.kinds if k not in qa_lib.QA_KINDS]
    if unknown or not q.kinds:
      raise ConfigError(f"qa.kinds {tuple(q.kinds)}: choose among {qa_lib.QA_KINDS}")

  def __call__(self, samples, indices, masks, key) -> dict:
    rng = np.random.default_rng([self.seed, 7, *key])
    items = []
    for s, i, m in zip(samples, indices, masks):
      kind = self.q.kinds[rng.integers(len(self.q.kinds))]
      context = self.contexts[i] if (self.contexts is not None and rng.random() < self.q.context_fraction) else None
      items.append(qa_lib.build_item(self.tok, kind, s.label, s.defect_type, m, self.bins, context,
                                     self.q.max_boxes))
    return qa_lib.pad_sequences(items, self.q.max_len)


class QAStream:
  """The loader's images with QA items built on the host; its state is the loader's position."""

  def __init__(self, loader, build):
    self.loader, self.build = loader, build
    self._it = iter(loader)

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    state = self.loader.get_state()
    batch = next(self._it)
    samples = [self.loader.samples[i] for i in batch["indices"]]
    items = self.build(samples, batch["indices"], batch["masks"], (state["epoch"], state["index"]))
    return {"images": batch["images"], **items}

  def get_state(self) -> dict:
    return self.loader.get_state()

  def set_state(self, state: dict) -> None:
    self.loader.set_state(state)
    self._it = iter(self.loader)


def qa_items(task, samples, n_items: int, with_context: bool = True):
  """Fixed evaluation items: every kind for images spread over the split, the anomaly context on
  every other item (when the task has a source). Returns ([(sample index, kind)], [Sequence])."""
  kinds = tuple(task.config.qa.kinds)
  n_images = max(1, min(len(samples), -(-n_items // len(kinds))))
  picks = np.unique(np.linspace(0, len(samples) - 1, n_images).round().astype(int))
  contexts = task.contexts_for([samples[i] for i in picks]) if with_context else None
  builder = task.items_builder(seed=12345)
  rows, items = [], []
  for p, i in enumerate(picks):
    s = samples[i]
    mask = s.load_mask(s.load_image().shape[:2])
    for kind in kinds:
      context = contexts[p] if contexts is not None and len(items) % 2 else None
      items.append(qa_lib.build_item(builder.tok, kind, s.label, s.defect_type, mask, builder.bins, context,
                                     task.config.qa.max_boxes))
      rows.append((int(i), kind))
  return rows[:n_items], items[:n_items]


def qa_metrics(task, lora, moondream, samples, batch_size: int, n_items: int) -> dict:
  """Mean teacher-forced loss and token accuracy of fixed QA items (LoRA None: the base decoder)."""
  from aajax.data.transforms import preprocess
  cfg = task.cfg
  rows, items = qa_items(task, samples, n_items, with_context=getattr(task, "source", None) is not None)
  arrays = qa_lib.pad_sequences(items, task.config.qa.max_len)
  crops = np.stack([preprocess(samples[i].load_image(), cfg.image_size, NORM) for i, _ in rows])
  fn = jax.jit(lambda l, p, x, s: qa_model.sequence_losses(cfg.moondream, p, x, s, l, cfg.lora)[1])
  totals, count = {}, 0
  for start in range(0, len(rows), batch_size):
    sl = slice(start, start + batch_size)
    n = len(rows[sl])
    seq = {k: _pad_rows(v[sl], batch_size, k.startswith("t_")) for k, v in arrays.items()}
    metrics = jax.device_get(fn(lora, moondream, jnp.asarray(_pad_rows(crops[sl], batch_size)), seq))
    for k, v in metrics.items():   # batch means, weighted by the batch's real rows
      totals[k] = totals.get(k, 0.0) + float(v) * n
    count += n
  return {"qa_" + k: v / count for k, v in totals.items()}


def _pad_rows(a, rows: int, no_target: bool = False):
  """Pad to `rows` with copies of row 0 (one compiled shape); target fields get no targets there."""
  n = len(a)
  if n == rows:
    return jnp.asarray(a)
  fill = np.full_like(a[:1], qa_lib.NO_TARGET) if no_target else a[:1]
  return jnp.asarray(np.concatenate([a, np.repeat(fill, rows - n, 0)]))


def aa_moondream_defaults(config):
  """Task fields of an AA-Moondream run config (the train fields come from `train_defaults()`)."""
  config.task = "aa_moondream"
  config.stages = AAMoondreamTask.stages
  config.model = recipe.model_defaults()
  config.data = aa_data.data_defaults()
  config.data.norm = NORM
  config.eval = ml_collections.ConfigDict({"batch_size": 8, "heatmaps_per_class": 4})
  config.qa = ml_collections.ConfigDict(dict(
      kinds=qa_lib.QA_KINDS, context_fraction=0.5, max_len=64, max_boxes=3, map_threshold=0.5,
      source="head", aa_model="", class_name="", eval_items=60))
  config.optimizer = "adam"
  config.b1, config.b2 = 0.5, 0.999   # AA-CLIP's betas
  return config


tasks.register("aa_moondream", AAMoondreamTask)
