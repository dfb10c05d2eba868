"""AA-Moondream: anomaly adapters + head on Moondream's frozen vision tower, then LoRA on anomaly QA.

    --config=configs/aa_moondream.py              the embedded demo: a small random Moondream (the
                                                  tiny decoder, a 6-block vision tower at 128 px) on
                                                  the synthetic defect set, both stages, a few
                                                  minutes on 2 CPU cores, no download
    --config=configs/aa_moondream.py:moondream2   Moondream 2 (27 blocks: adapters 1-6, levels
                                                  7/14/21/27) on VisA, evaluated on MVTec; set
                                                  --config.model.init=<converted Moondream dir>,
                                                  --config.data.root / eval_root
    --config=configs/aa_moondream.py:moondream2,data=mvtec,eval=visa
    --config.qa.source=aa --config.qa.aa_model=<AA model dir>   the hybrid path: the decoder is
                                                  conditioned on a trained AA-CLIP / AA-SigLIP result

After training: `python -m launch.diagnose --model=<workdir> --data=synthetic` compares the base
Moondream with the trained model; `aajax.aa_moondream.runtime.AAMoondreamRuntime.load(<workdir>)`
gives `explain(image)`.
"""
import ml_collections

from aajax.aa_moondream.tasks import aa_moondream_defaults
from aajax.errors import ConfigError
from aajax.train.config import parse_config_arg, train_defaults


def get_config(arg=None):
  a = parse_config_arg(arg, {"size": "demo", "data": "synthetic", "eval": ""})
  c = aa_moondream_defaults(train_defaults())
  c.data.name = a["data"]
  c.data.eval_name = a["eval"]
  if a["size"] == "demo":
    # The tiny Moondream decoder and region heads; its 2-block, 28 px vision tower is replaced by a
    # 6-block one at 128 px (a 16 x 16 map), the smallest that shows the synthetic defects.
    c.model.moondream = "tiny"
    c.model.vision = ml_collections.ConfigDict(dict(
        enc_dim=96, enc_patch_size=8, enc_n_layers=6, enc_ff_dim=384, enc_n_heads=4, crop_size=128,
        overlap_margin=2, proj_inner_dim=128))
    c.model.max_context = 512
    c.model.embed_dim = 64
    c.data.synthetic.update(image_size=128, n_train=24, n_test=16)
    c.eval.batch_size = 16
    c.qa.max_len = 48
    c.log_every = 20
    c.stage_anomaly = ml_collections.ConfigDict(dict(steps=200, batch_size=8, lr=2e-3, ckpt_every=100,
                                                     best_metric="pixel_auroc"))
    c.stage_qa = ml_collections.ConfigDict(dict(steps=300, batch_size=8, lr=3e-3, ckpt_every=100))
  elif a["size"] in ("moondream2", "moondream3"):
    c.model.moondream = a["size"]
    c.data.name = "visa" if a["data"] == "synthetic" else a["data"]
    c.data.eval_name = a["eval"] or "mvtec"
    c.data.train_split = "test"   # VisA full-shot = its 1-class test split, as AA-CLIP
    c.stage_anomaly = ml_collections.ConfigDict(dict(steps=15 * 1081, batch_size=2, lr=5e-4, ckpt_every=1081,
                                                     best_metric="pixel_auroc"))
    c.stage_qa = ml_collections.ConfigDict(dict(steps=3000, batch_size=8, lr=2e-4, ckpt_every=500,
                                                warmup_steps=100))
  else:
    raise ConfigError(f"unknown size {a['size']!r}: use no argument (the demo), 'moondream2' or 'moondream3'")
  return c
