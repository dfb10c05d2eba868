"""Random HF decoder-only models saved as safetensors + config.json, and the torch reference logits."""
import numpy as np
import torch
import transformers

TINY = {
    "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM,
              dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, vocab_size=96, max_position_embeddings=64, rope_theta=5000.0,
                   rms_norm_eps=1e-5, tie_word_embeddings=False)),
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM,
              dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, vocab_size=96, max_position_embeddings=64, rope_theta=1e6,
                   rms_norm_eps=1e-6, tie_word_embeddings=True)),
    "llama-bias": (transformers.LlamaConfig, transformers.LlamaForCausalLM,
                   dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=1, vocab_size=96, max_position_embeddings=64,
                        attention_bias=True, mlp_bias=True, tie_word_embeddings=True)),
    "gpt2": (transformers.GPT2Config, transformers.GPT2LMHeadModel,
             dict(n_embd=32, n_layer=2, n_head=4, vocab_size=96, n_positions=64, bos_token_id=0, eos_token_id=0)),
}
FULL = {
    # SmolLM-135M's shape (config.json of HuggingFaceTB/SmolLM-135M), random weights
    "smollm-135m": (transformers.LlamaConfig, transformers.LlamaForCausalLM,
                    dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, vocab_size=49152, max_position_embeddings=2048,
                         rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=True,
                         bos_token_id=0, eos_token_id=0)),
    "gpt2-124m": (transformers.GPT2Config, transformers.GPT2LMHeadModel,
                  dict(n_embd=768, n_layer=12, n_head=12, vocab_size=50257, n_positions=1024)),
}


def save_random(kind: str, folder, seed: int = 0, spread: float = 0.1, max_shard_size=None):
  """A random model of TINY/FULL[kind] written with save_pretrained (safetensors); returns it (eval mode).

  Norm scales, biases and weights are all perturbed (HF initialises norms to 1 and biases to 0,
  which would leave those parameters untested)."""
  cfg_cls, model_cls, fields = {**TINY, **FULL}[kind]
  torch.manual_seed(seed)
  model = model_cls(cfg_cls(**fields, attn_implementation="eager")).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if p.ndim == 1:
        p.add_(spread * torch.randn_like(p))
      elif "wpe" in name or "wte" in name or "embed" in name:
        p.normal_(0.0, spread)
  extra = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
  model.save_pretrained(folder, safe_serialization=True, **extra)
  return model


def torch_logits(model, tokens) -> np.ndarray:
  """[T, V] float32 logits of one unpadded sequence."""
  with torch.no_grad():
    return model(torch.as_tensor(np.asarray(tokens)[None], dtype=torch.long)).logits[0].float().numpy()
