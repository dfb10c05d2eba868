"""Write aajax two-tower params as an HF model directory (`config.json` + `model.safetensors`).

The inverse of the HF converter, with the same name table. Used by the embed demo (a random model
in the real layout, so the converter runs without a download) and by round-trip tests; the files
load in transformers with `SiglipModel.from_pretrained` / `CLIPModel.from_pretrained`.
"""
import json
import os

from aajax.encoders.config import TwoTowerConfig
from weights_convert.common import export_state
from weights_convert.hf_towers import TRANSFORMS, fuse_split, two_tower_rows

_ACT = {"gelu_tanh": "gelu_pytorch_tanh", "gelu": "gelu", "quick_gelu": "quick_gelu"}


def hf_config_dict(cfg: TwoTowerConfig) -> dict:
  v, t = cfg.vision, cfg.text
  vision = dict(hidden_size=v.width, num_hidden_layers=v.depth, num_attention_heads=v.heads,
                intermediate_size=v.mlp_dim, patch_size=v.patch, image_size=v.image_size, num_channels=3,
                layer_norm_eps=v.ln_eps, hidden_act=_ACT[v.act])
  text = dict(hidden_size=t.width, num_hidden_layers=t.depth, num_attention_heads=t.heads,
              intermediate_size=t.mlp_dim, vocab_size=t.vocab_size, max_position_embeddings=t.max_len,
              layer_norm_eps=t.ln_eps, hidden_act=_ACT[t.act])
  if cfg.family == "siglip":
    text.update(pad_token_id=1, eos_token_id=1, bos_token_id=None, projection_size=t.out_dim)
    return {"model_type": "siglip", "architectures": ["SiglipModel"], "vision_config": vision, "text_config": text}
  text.update(pad_token_id=t.vocab_size - 1, bos_token_id=t.vocab_size - 2, eos_token_id=t.vocab_size - 1)
  return {"model_type": "clip", "architectures": ["CLIPModel"], "projection_dim": t.out_dim,
          "vision_config": vision, "text_config": text}


def save_hf_two_tower(cfg: TwoTowerConfig, params, out_dir: str) -> str:
  from safetensors.numpy import save_file
  state = export_state(params, two_tower_rows(cfg), TRANSFORMS)
  if cfg.vision.pool == "map":
    state = fuse_split(state, ["vision_model.head.attention"])
  os.makedirs(out_dir, exist_ok=True)
  save_file(state, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
  with open(os.path.join(out_dir, "config.json"), "w") as f:
    json.dump(hf_config_dict(cfg), f, indent=2)
  return out_dir
