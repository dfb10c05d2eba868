"""Random-init transformers towers matching an aajax TwoTowerConfig, for parity tests."""
import torch
import transformers

from aajax.encoders.config import TwoTowerConfig


def hf_config(cfg: TwoTowerConfig):
  v, t = cfg.vision, cfg.text
  vision = dict(hidden_size=v.width, num_hidden_layers=v.depth, num_attention_heads=v.heads,
                intermediate_size=v.mlp_dim, patch_size=v.patch, image_size=v.image_size,
                layer_norm_eps=v.ln_eps, hidden_act=hf_act(v.act), attn_implementation="eager")
  text = dict(hidden_size=t.width, num_hidden_layers=t.depth, num_attention_heads=t.heads,
              intermediate_size=t.mlp_dim, vocab_size=t.vocab_size, max_position_embeddings=t.max_len,
              layer_norm_eps=t.ln_eps, hidden_act=hf_act(t.act))
  if cfg.family == "siglip":
    text.update(pad_token_id=1, eos_token_id=1, bos_token_id=None)
    if t.proj_dim:
      text["projection_size"] = t.proj_dim
    c = transformers.SiglipConfig(vision_config=vision, text_config=text)
  else:
    text.update(pad_token_id=t.vocab_size - 1, eos_token_id=2, bos_token_id=t.vocab_size - 2)
    c = transformers.CLIPConfig(vision_config=vision, text_config=text, projection_dim=v.proj_dim)
  c._attn_implementation = "eager"
  return c


def hf_act(act):
  return {"gelu_tanh": "gelu_pytorch_tanh", "gelu": "gelu", "quick_gelu": "quick_gelu"}[act]


def random_hf_model(cfg: TwoTowerConfig, seed=0, scale_norms=True):
  """A random-init HF model; LayerNorm params are randomised too so that a swapped scale/bias shows."""
  torch.manual_seed(seed)
  cls = transformers.SiglipModel if cfg.family == "siglip" else transformers.CLIPModel
  model = cls(hf_config(cfg)).eval()
  if scale_norms:
    with torch.no_grad():
      for name, p in model.named_parameters():
        if "norm" in name or "layernorm" in name or name.endswith(("class_embedding", "probe")):
          p.add_(0.1 * torch.randn_like(p))
        elif "logit" in name:
          p.fill_(2.3 if "scale" in name else -3.0)
  return model
