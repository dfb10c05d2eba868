"""The two AA-Moondream training objectives as pure functions of (params, batch).

Stage "anomaly" (adapters, projections, anchors, level weights): AA-CLIP's stage-2 loss family from
`aajax.anomaly.losses`, with the learned anchors in place of text anchors:
    loss = CE(image logits, label) + sum over levels and the fused map of (focal + 2 dice)
on the softmaxed, bilinearly upsampled (align_corners=True) patch logits.

Stage "qa" (LoRA on the decoder): teacher-forced cross-entropy of the answer tokens and of the
coordinate / size bins of `detect` answers (`aajax.aa_moondream.qa_model.sequence_losses`).
"""
import optax

from aajax.aa_moondream.model import AAMoondream
from aajax.anomaly import losses


def anomaly_loss(model: AAMoondream, params, batch):
  """batch: images [B, S, S, 3], masks [B, S, S] {0, 1}, labels [B] int."""
  out = model.apply({"params": params}, batch["images"])
  g = model.cfg.grid

  def seg(logits):
    return losses.seg_loss_from_logits(logits, (g, g), batch["masks"])

  levels = [seg(lg) for lg in out["level_logits"]]
  fused = seg(out["fused_logits"])
  # AA-CLIP's detection CE, on the head's image logits (detection feature + map peak)
  det = optax.softmax_cross_entropy_with_integer_labels(out["image_logits"], batch["labels"]).mean()
  loss = det + sum(levels) + fused
  return loss, {"loss": loss, "det_loss": det, "seg_loss": sum(levels), "fused_seg_loss": fused}
