"""Caption training: the prefix-conditioning VLM (frozen SigLIP -> projection -> decoder with LoRA)
or the cross-attention baseline, on the synthetic caption set or image-caption pairs.

    --config=configs/prefix_vlm.py             demo: tiny random SigLIP-shaped tower and decoder on
                                               captions generated from the synthetic defect set's
                                               metadata; trains in about a minute on 2 CPU cores
    --config=configs/prefix_vlm.py:xattn       the same demo with the cross-attention baseline
    --config=configs/prefix_vlm.py:base        the real recipe's shapes: SigLIP-base/16 at 224 px,
                                               a 135M-parameter Llama-family decoder shaped like
                                               SmolLM-135M (576 wide, 30 layers, 9 heads / 3 KV
                                               heads, RMSNorm, SwiGLU, tied embeddings), LoRA
                                               r=16 alpha=16 dropout=0.1, projection lr 1e-3,
                                               LoRA lr 5e-5, batch 4 x accumulation 16, remat
    --config=configs/prefix_vlm.py:base,xattn  the baseline at those shapes (everything trained)
    --config=configs/prefix_vlm.py:decoder_dir=DIR
                                               the prefix VLM on a converted decoder (frozen): its
                                               config and weights replace the random decoder; convert
                                               one with python -m weights_convert.decoder (SmolLM,
                                               Llama, Qwen2, Mistral, GPT-2 safetensors)

Data: --config.data.source=pairs --config.data.root=DIR --config.data.index=train.jsonl
(--config.data.eval_index=val.jsonl); JSONL records {"image": path, "caption": text} or a CSV with
columns image, caption.
"""
import ml_collections

from aajax.captioning.tasks import captioner_defaults
from aajax.train.config import parse_config_arg, train_defaults


def get_config(arg=None):
  a = parse_config_arg(arg, {"decoder_dir": ""}, switches=("xattn", "base"))
  c = captioner_defaults(train_defaults())
  c.stages = ("captions",)
  c.model.arch = "xattn" if a["xattn"] else "prefix"
  c.model.decoder_dir = a["decoder_dir"]
  if a["base"]:
    c.model.vision = ml_collections.ConfigDict(dict(width=768, depth=12, heads=12, mlp_dim=3072, patch=16,
                                                    image_size=224))
    c.model.text = ml_collections.ConfigDict(dict(family="llama", dim=576, ff_dim=1536, n_layers=30, n_heads=9,
                                                  n_kv_heads=3, rotary_dim=64, max_context=2048,
                                                  vocab_size=49152, rope_theta=10000.0, ln_eps=1e-5,
                                                  tie_embeddings=True))
    c.model.lora.update(rank=16, alpha=16.0, dropout=0.1)
    c.model.remat = True
    c.data.update(image_size=224, max_len=30)
    c.batch_size, c.accum = 64, 16
    c.projection_lr, c.lora_lr = 1e-3, 5e-5
    c.lr = 5e-5            # the baseline trains every weight at this rate
    c.steps = 2000
    c.log_every, c.ckpt_every = 20, 500
  else:
    c.batch_size = 32
    c.steps = 150
    c.lr = 1e-3
    c.projection_lr, c.lora_lr = 3e-3, 3e-3
    c.log_every, c.ckpt_every = 25, 150
  c.best_metric = "token_acc"
  return c
