"""Moondream's towers as transformers models: the dense text decoder is `PhiForCausalLM` (Phi-1.5
shape, parallel block, partial rotary) and the vision tower is a head-less `SiglipVisionModel`.

The state functions take a release-layout Moondream state ({name: tensor or array}, torch
`[out, in]`) and return the transformers names; tensors are sliced, never copied, so a model built
on the meta device and loaded with `load_state_dict(..., assign=True)` shares the memory. Used by the
parity tests and the benchmark; also an export path for the dense Moondream 2 / 0.5B towers.
(Phi has no bidirectional image prefix: the text model matches Moondream on causal prompts.)
"""
from aajax.vlm.config import TextConfig, VisionConfig


def phi_config(tc: TextConfig):
  from transformers import PhiConfig
  if tc.moe is not None or tc.tau:
    raise ValueError("only the dense decoder (Moondream 2 / 0.5B) is a Phi model")
  return PhiConfig(vocab_size=tc.vocab_size, hidden_size=tc.dim, intermediate_size=tc.ff_dim,
                   num_hidden_layers=tc.n_layers, num_attention_heads=tc.n_heads, num_key_value_heads=tc.n_kv_heads,
                   max_position_embeddings=tc.max_context, partial_rotary_factor=tc.rotary_dim / tc.head_dim,
                   rope_theta=tc.rope_theta, layer_norm_eps=tc.ln_eps, hidden_act="gelu_new",
                   resid_pdrop=0.0, embd_pdrop=0.0, attention_dropout=0.0, tie_word_embeddings=False)


def siglip_vision_config(vc: VisionConfig):
  from transformers import SiglipVisionConfig
  return SiglipVisionConfig(hidden_size=vc.enc_dim, intermediate_size=vc.enc_ff_dim, num_hidden_layers=vc.enc_n_layers,
                            num_attention_heads=vc.enc_n_heads, image_size=vc.crop_size, patch_size=vc.enc_patch_size,
                            layer_norm_eps=vc.ln_eps, vision_use_head=False, hidden_act="gelu_pytorch_tanh")


def to_phi_state(state, tc: TextConfig) -> dict:
  d, kd = tc.dim, tc.n_kv_heads * tc.head_dim
  out = {"model.embed_tokens.weight": state["text.wte"]}
  for i in range(tc.n_layers):
    n, h = f"text.blocks.{i}", f"model.layers.{i}"
    for kind in ("weight", "bias"):
      qkv = state[f"{n}.attn.qkv.{kind}"]
      for proj, lo, hi in (("q_proj", 0, d), ("k_proj", d, d + kd), ("v_proj", d + kd, d + 2 * kd)):
        out[f"{h}.self_attn.{proj}.{kind}"] = qkv[lo:hi]
      for ours, theirs in (("attn.proj", "self_attn.dense"), ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2"),
                           ("ln", "input_layernorm")):
        out[f"{h}.{theirs}.{kind}"] = state[f"{n}.{ours}.{kind}"]
  for ours, theirs in (("text.post_ln", "model.final_layernorm"), ("text.lm_head", "lm_head")):
    for kind in ("weight", "bias"):
      out[f"{theirs}.{kind}"] = state[f"{ours}.{kind}"]
  return out


def to_siglip_vision_state(state, vc: VisionConfig) -> dict:
  """Names of the transformers 5 module tree (no `vision_model.` level)."""
  d, p = vc.enc_dim, vc.enc_patch_size
  out = {"embeddings.patch_embedding.weight": state["vision.patch_emb.weight"].reshape(d, vc.in_channels, p, p),
         "embeddings.patch_embedding.bias": state["vision.patch_emb.bias"],
         "embeddings.position_embedding.weight": state["vision.pos_emb"][0]}
  for kind in ("weight", "bias"):
    out[f"post_layernorm.{kind}"] = state[f"vision.post_ln.{kind}"]
  for i in range(vc.enc_n_layers):
    n, h = f"vision.blocks.{i}", f"encoder.layers.{i}"
    for kind in ("weight", "bias"):
      qkv = state[f"{n}.attn.qkv.{kind}"]
      for j, proj in enumerate(("q_proj", "k_proj", "v_proj")):
        out[f"{h}.self_attn.{proj}.{kind}"] = qkv[j * d:(j + 1) * d]
      for ours, theirs in (("attn.proj", "self_attn.out_proj"), ("ln1", "layer_norm1"), ("ln2", "layer_norm2"),
                           ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2")):
        out[f"{h}.{theirs}.{kind}"] = state[f"{n}.{ours}.{kind}"]
  return out


def _as_torch(state: dict) -> dict:
  import numpy as np
  import torch
  return {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in state.items()}


def phi_model(state, tc: TextConfig):
  """A `PhiForCausalLM` whose parameters are the given tensors (no copy)."""
  import torch
  from transformers import PhiForCausalLM
  cfg = phi_config(tc)
  with torch.device("meta"):
    model = PhiForCausalLM(cfg)
  model.load_state_dict(_as_torch(to_phi_state(state, tc)), strict=True, assign=True)
  model.model.rotary_emb = type(model.model.rotary_emb)(cfg)  # its inv_freq buffer was built on meta
  return model.eval()


def siglip_vision_model(state, vc: VisionConfig):
  """A head-less `SiglipVisionModel` whose parameters are the given tensors (no copy)."""
  import torch
  from transformers import SiglipVisionModel
  with torch.device("meta"):
    model = SiglipVisionModel(siglip_vision_config(vc))
  model.load_state_dict(_as_torch(to_siglip_vision_state(state, vc)), strict=True, assign=True)
  emb = model.embeddings
  emb.register_buffer("position_ids", torch.arange(vc.n_tokens)[None], persistent=False)
  return model.eval()
