"""AA-CLIP losses and the similarity maps they read, with the reference's exact numerics.

Training maps: s = scale * <patch, anchor> on the patch grid -> bilinear (align_corners=True) up to
the image size -> softmax over {normal, abnormal} (computed as the logistic of the upsampled
abnormal-minus-normal margin: the same probabilities, half the upsampling). Losses on those probabilities:
  focal: -(1 - pt)^2 log(pt), pt = sum_c onehot_c p_c + 1e-5 with the one-hot clamped to
         [1e-5, 1 - 1e-5], mean over all pixels (alpha = 1);
  dice:  1 - mean_b (2 <p, t> + 1) / (sum p + sum t + 1), on the normal channel against 1 - mask
         and on the abnormal channel against the mask;
  orthogonality (stage 1): (mean over the batch's images of <t_normal, t_abnormal>)^2;
  detection (stage 2): cross-entropy of <det, [t_n, t_a]> (no temperature) against the label.
"""
import jax
import jax.numpy as jnp
import optax

from aajax.nn.resize import resize_2d

FOCAL_SMOOTH = 1e-5


def upsampled_logits(logits, grid: tuple[int, int], size: int):
  """[B, N, 2] patch logits -> [B, size, size, 2] with torch bilinear align_corners=True."""
  b, _, k = logits.shape
  return resize_2d(logits.reshape(b, grid[0], grid[1], k), (size, size), "bilinear_corners")


def upsampled_margin(logits, grid: tuple[int, int], size: int):
  """[B, N, 2] patch logits -> [B, size, size] abnormal-minus-normal margin, upsampled.

  A two-way softmax is the logistic of the logits' difference, and the bilinear map is linear, so
  upsampling the one difference map gives the training maps' probabilities exactly (up to float
  rounding) at half the upsampling work, with no 2-wide minor axis for the [B, H, W] maps."""
  b = logits.shape[0]
  margin = (logits[..., 1] - logits[..., 0]).reshape(b, grid[0], grid[1])
  return resize_2d(margin, (size, size), "bilinear_corners", axes=(-2, -1))


def seg_probabilities(logits, grid, size):
  """[B, N, 2] patch logits -> [B, size, size, 2]: softmax over {normal, abnormal} of the upsampled logits."""
  margin = upsampled_margin(logits, grid, size)
  return jnp.stack([jax.nn.sigmoid(-margin), jax.nn.sigmoid(margin)], axis=-1)


def focal_loss(probs, mask, gamma: float = 2.0):
  """probs [B, H, W, 2], mask [B, H, W] in {0, 1}."""
  return _focal(probs[..., 0], probs[..., 1], mask, gamma)


def _focal(p_normal, p_abnormal, mask, gamma: float = 2.0):
  # smooth / (num_classes - 1) with 2 classes: the one-hot clamped to [1e-5, 1 - 1e-5]
  on_normal = jnp.clip(1 - mask, FOCAL_SMOOTH, 1 - FOCAL_SMOOTH)
  on_abnormal = jnp.clip(mask, FOCAL_SMOOTH, 1 - FOCAL_SMOOTH)
  pt = on_normal * p_normal + on_abnormal * p_abnormal + FOCAL_SMOOTH
  return jnp.mean(-((1 - pt) ** gamma) * jnp.log(pt))


def dice_loss(pred, target):
  """pred, target [B, H, W]."""
  b = pred.shape[0]
  p, t = pred.reshape(b, -1), target.reshape(b, -1)
  dice = (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)
  return 1 - dice.mean()


def seg_loss(probs, mask):
  """focal + dice on both channels; probs [B, H, W, 2], mask [B, H, W]."""
  return _seg_loss(probs[..., 0], probs[..., 1], mask)


def seg_loss_from_logits(logits, grid: tuple[int, int], mask):
  """seg_loss(seg_probabilities(logits, grid, size), mask) without building the [B, H, W, 2] maps."""
  margin = upsampled_margin(logits, grid, mask.shape[1])
  return _seg_loss(jax.nn.sigmoid(-margin), jax.nn.sigmoid(margin), mask)


def _seg_loss(p_normal, p_abnormal, mask):
  return _focal(p_normal, p_abnormal, mask) + dice_loss(p_normal, 1 - mask) + dice_loss(p_abnormal, mask)


def orthogonality_loss(anchors):
  """anchors [B, E, 2] (one per image) -> (mean_b <t_n, t_a>)^2."""
  return jnp.mean(jnp.sum(anchors[..., 0] * anchors[..., 1], axis=-1)) ** 2


def detection_loss(det, anchors, labels):
  """det [B, E], anchors [B, E, 2], labels [B] int -> mean cross-entropy."""
  logits = jnp.einsum("be,bek->bk", det, anchors)
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
