"""AA-CLIP on a SigLIP backbone.

    --config=configs/aa_siglip.py                 the embedded demo: a small random SigLIP-shaped
                                                  model on the synthetic defect set, both stages,
                                                  a few minutes on 2 CPU cores
    --config=configs/aa_siglip.py:so400m          the paper's recipe on SigLIP so400m/14 at 378 px
                                                  (27 blocks: levels 7/14/21/27, adapters on 1-6);
                                                  set --config.model.init=<converted model dir>
    --config=configs/aa_siglip.py:so400m,data=visa,eval=mvtec
                                                  train on VisA full-shot, evaluate on MVTec
                                                  (--config.data.root / eval_root point at them)
"""
import ml_collections

from aajax.anomaly.tasks import aa_defaults, paper_recipe
from aajax.errors import ConfigError
from aajax.train.config import parse_config_arg, train_defaults


def get_config(arg=None):
  a = parse_config_arg(arg, {"size": "demo", "data": "synthetic", "eval": ""})
  c = aa_defaults(train_defaults())
  c.data.name = a["data"]
  c.data.eval_name = a["eval"]
  if a["size"] == "demo":
    # Small enough to train both stages on 2 CPU cores in a few minutes, shaped like SigLIP (MAP head,
    # tanh-GELU, no class token). 8-pixel patches give a 16 x 16 map at 128 px. A random text tower
    # gives nearly parallel normal/abnormal anchors, so the demo trains the text stage faster and
    # weights the orthogonality term 1.0 (the recipe's 0.1 and 1e-5 assume a pretrained tower).
    c.model.tower = ml_collections.ConfigDict(dict(
        family="siglip", width=128, depth=6, heads=4, mlp_dim=512, patch=8, image_size=128,
        text_len=16, vocab=4096))
    c.model.image_size = 128
    c.model.text_adapt_until = 2
    c.ortho_weight = 1.0
    c.data.synthetic.update(image_size=128, n_train=24, n_test=16)
    c.eval.batch_size = 16
    c.log_every = 10
    c.stage_text = ml_collections.ConfigDict(dict(steps=40, batch_size=16, lr=1e-3, ckpt_every=20))
    c.stage_image = ml_collections.ConfigDict(dict(steps=200, batch_size=8, lr=2e-3, ckpt_every=100,
                                                   best_metric="pixel_auroc"))
  elif a["size"] == "so400m":
    paper_recipe(c)
    c.model.backbone = "siglip-so400m-patch14-384"
    c.model.image_size = 378
    c.data.name = "visa" if a["data"] == "synthetic" else a["data"]
    c.data.eval_name = a["eval"] or "mvtec"
  else:
    raise ConfigError(f"unknown size {a['size']!r}: use no argument (the demo) or 'so400m'")
  return c
