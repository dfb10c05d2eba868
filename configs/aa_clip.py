"""AA-CLIP as the paper trains it: CLIP ViT-L/14-336 at 518 px (37 x 37 patches), exact GELU.

    python -m weights_convert.clip --src ViT-L-14-336.pt --act gelu --dst models/clip-l336
    python -m launch.train --config=configs/aa_clip.py --workdir=runs/aa_clip \\
        --config.model.init=models/clip-l336 --config.data.root=/data/visa --config.data.eval_root=/data/mvtec

Recipe (aajax.anomaly.tasks.paper_recipe): text adapters after blocks 1-3 and image adapters after
blocks 1-6 (lambda 0.1), levels 6/12/18/24, DPAM from block 6; stage 1 five epochs of VisA full-shot
at batch 16 and lr 1e-5; stage 2 fifteen epochs at batch 2 and lr 5e-4; evaluation on MVTec AD.
Arguments: `:bug_compat` uses the released batch-axis DPAM; `:cross_attention` the stage-1
cross-attention variant; `data=mvtec,eval=visa` the other direction of the protocol.
"""
from aajax.anomaly.tasks import aa_defaults, paper_recipe
from aajax.train.config import parse_config_arg, train_defaults


def get_config(arg=None):
  c = paper_recipe(aa_defaults(train_defaults()))
  c.model.backbone = "clip-vit-large-patch14-336"   # shapes; the weights come from model.init
  c.model.image_size = 518
  c.model.text_adapt_until = 3
  a = parse_config_arg(arg, {"data": "", "eval": ""}, switches=("bug_compat", "cross_attention"))
  if a["bug_compat"]:
    c.model.dpam_mode = "vv_batch"
  c.model.cross_attention = a["cross_attention"] or c.model.cross_attention
  c.data.name = a["data"] or c.data.name
  c.data.eval_name = a["eval"] or c.data.eval_name
  return c
