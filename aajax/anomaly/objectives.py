"""The two AA training objectives as pure functions of (params, batch), and the parameter split.

Stage 1 ("text"): text adapters (+ cross-attention) learn from frozen surgery features of the
  images; loss = sum over levels of seg_loss + ortho_weight * orthogonality (the released code
  back-propagates only the last level: `stage1_last_level_only=True` reproduces that).
Stage 2 ("image"): image adapters and projectors learn against frozen anchors computed once with
  the stage-1 text path; loss = detection CE + sum over levels of seg_loss.

A batch is {"images": [B, H, W, 3] normalised, "masks": [B, H, W] in {0, 1}, "labels": [B] int,
"class_ids": [B] int indexing the prompt table / anchors} (what `aajax.data.loader.Loader` yields).
"""
import jax
import jax.numpy as jnp

from aajax.anomaly import losses
from aajax.anomaly.model import AAModel
from aajax.anomaly.prompts import NUM_NORMAL

STAGE_GROUPS = {
    "text": ("text_adapters_", "text_proj", "cross_attn"),
    "image": ("image_adapters_", "seg_proj_", "det_proj"),
}


def split_params(params: dict, stage: str) -> tuple[dict, dict]:
  """(frozen, trainable) top-level groups of the full AA param tree for a stage."""
  prefixes = STAGE_GROUPS[stage]
  trainable = {k: v for k, v in params.items() if k.startswith(prefixes)}
  frozen = {k: v for k, v in params.items() if k not in trainable}
  return frozen, trainable


def merge(frozen: dict, trainable: dict) -> dict:
  return {**frozen, **trainable}


def batch_anchors(model: AAModel, params, prompt_ids, class_id, context=None, rng=None):
  """Anchors [B, E, 2] for each image of the batch.

  Without cross-attention the anchors of every class are computed once and gathered; with it, each
  image's class sentences attend to that image's context.
  """
  deterministic = rng is None
  rngs = None if deterministic else {"dropout": rng}
  if context is None:
    table = model.apply({"params": params}, prompt_ids, NUM_NORMAL, method=AAModel.text_anchors)
    return table[class_id]
  return model.apply({"params": params}, jnp.asarray(prompt_ids)[class_id], NUM_NORMAL, context, deterministic,
                     method=AAModel.text_anchors, rngs=rngs)


def seg_losses(model: AAModel, level_feats, anchors, mask):
  cfg = model.cfg
  return [losses.seg_loss_from_logits(cfg.score_scale * jnp.einsum("bne,bek->bnk", feats, anchors),
                                      (cfg.grid, cfg.grid), mask) for feats in level_feats]


def stage1_loss(model: AAModel, params, batch, prompt_ids, rng, ortho_weight=0.1, last_level_only=False):
  inputs = model.apply({"params": params}, batch["images"], method=AAModel.stage1_image_inputs)
  anchors = batch_anchors(model, params, prompt_ids, batch["class_ids"], inputs["context"], rng)
  per_level = seg_losses(model, inputs["levels"], anchors, batch["masks"])
  seg = per_level[-1] if last_level_only else sum(per_level)
  ortho = losses.orthogonality_loss(anchors)
  loss = seg + ortho_weight * ortho
  return loss, {"loss": loss, "seg_loss": seg, "ortho_loss": ortho}


def stage2_loss(model: AAModel, params, batch, anchor_table):
  feats = model.apply({"params": params}, batch["images"], method=AAModel.image_features)
  anchors = anchor_table[batch["class_ids"]]
  det = losses.detection_loss(feats["det"], anchors, batch["labels"])
  seg = sum(seg_losses(model, feats["seg"], anchors, batch["masks"]))
  loss = det + seg
  return loss, {"loss": loss, "det_loss": det, "seg_loss": seg}


def anchor_table(model: AAModel, params, prompt_ids, contexts=None):
  """[C, E, 2] anchors used as frozen targets by stage 2 and inference.

  With cross-attention the text path needs an image context: each class uses the mean context of
  its stage-2 training images (`contexts` [C, N, E]), a fixed, image-independent prototype.
  """
  if contexts is None:
    return model.apply({"params": params}, prompt_ids, NUM_NORMAL, method=AAModel.text_anchors)
  return model.apply({"params": params}, prompt_ids, NUM_NORMAL, contexts, method=AAModel.text_anchors)


def jit_stage1_context(model: AAModel):
  """images -> cross-attention context, jitted (used to build class prototypes)."""
  return jax.jit(lambda p, x: model.apply({"params": p}, x, method=AAModel.stage1_image_inputs)["context"])
