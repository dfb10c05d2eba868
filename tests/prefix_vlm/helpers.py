"""Tiny configs shared by the captioning tests."""
from aajax.captioning.tasks import captioner_defaults
from aajax.train.config import train_defaults

TINY_TEXT = dict(dim=32, ff_dim=64, n_layers=2, n_heads=4, n_kv_heads=2, rotary_dim=4, max_context=128)
TINY_VISION = dict(width=32, depth=1, heads=2, mlp_dim=64, patch=16, image_size=64)


def tiny_config(arch="prefix", **overrides):
  c = captioner_defaults(train_defaults())
  c.model.arch = arch
  c.model.text.update(TINY_TEXT)
  c.model.vision.update(TINY_VISION)
  c.data.update(n_per_class=12, classes=("brick", "grass", "coffee"), max_len=14)
  c.eval.update(batch_size=36, max_new=12)
  c.batch_size, c.steps, c.log_every, c.ckpt_every = 16, 60, 20, 60
  c.lr, c.projection_lr, c.lora_lr = 3e-3, 5e-3, 5e-3
  for k, v in overrides.items():
    c[k] = v
  return c
