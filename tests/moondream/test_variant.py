"""Moondream.from_pretrained(variant=...): a LoRA variant applied at load, against the reference's
forward with the variant (qkv / fc1 / fc2 pairs on their layers' inputs, the proj pair on the
attention *input*)."""
import jax
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from aajax.decoder.model import TextDecoder
from aajax.errors import CheckpointError, ConfigError
from aajax.model_dir import save_model
from aajax.vlm import lora_variant
from aajax.vlm.config import get_config
from aajax.vlm.moondream import Moondream
from tests.moondream import torch_reference as ref
from tests.moondream.helpers import tiny_model, write_tiny_tokenizer


def variant_state(params, n, rank=2, seed=0):
  rng = np.random.default_rng(seed)
  state = {}
  for i in range(n):
    for group, name in lora_variant.LAYERS:
      k = params["text"][f"blocks_{i}"][group][name]["kernel"]
      state[f"text.blocks.{i}.{group}.{name}.A"] = rng.standard_normal((rank, k.shape[0])).astype(np.float32) * 0.3
      state[f"text.blocks.{i}.{group}.{name}.B"] = rng.standard_normal((k.shape[1], rank)).astype(np.float32) * 0.3
  return state


def reference_hidden(state, lora, tc, x, prefix):
  """The reference's text_decoder with a variant: every pair adds F.linear(F.linear(inp, A), B), where
  inp is the layer's own input for qkv, fc1, fc2 and the block's LayerNormed input for proj."""
  q_len = x.shape[1]
  pos, mask = torch.arange(q_len), ref.prefix_mask(q_len, prefix)

  def delta(i, layer, inp):
    return F.linear(F.linear(inp, torch.tensor(lora[f"text.blocks.{i}.{layer}.A"])),
                    torch.tensor(lora[f"text.blocks.{i}.{layer}.B"]))

  for i in range(tc.n_layers):
    n = f"text.blocks.{i}"
    h = ref.layer_norm(state, f"{n}.ln", x)
    # qkv's pair is linear in h, so it rides in the weight; proj's reads h, not the attention output
    with_qkv = {**state, f"{n}.attn.qkv.weight": state[f"{n}.attn.qkv.weight"]
                + lora[f"{n}.attn.qkv.B"] @ lora[f"{n}.attn.qkv.A"]}
    attn = ref.text_attention(with_qkv, f"{n}.attn", h, pos, mask, tc) + delta(i, "attn.proj", h)
    a = ref.linear(state, f"{n}.mlp.fc1", h) + delta(i, "mlp.fc1", h)
    g = F.gelu(a, approximate="tanh")
    x = x + attn + ref.linear(state, f"{n}.mlp.fc2", g) + delta(i, "mlp.fc2", g)
  return x


def test_variant_applied_at_load_matches_the_reference(tmp_path):
  cfg, params, state = tiny_model("tiny")
  tc = cfg.text
  tok = write_tiny_tokenizer(str(tmp_path / "tokenizer.json"))
  save_model(str(tmp_path / "md"), "moondream", cfg.to_dict(), params, extra_files={"tokenizer.json": tok})
  lora = variant_state(params, tc.n_layers)
  path = lora_variant.save_variant(str(tmp_path / "final.pt"), lora)
  md = Moondream.from_pretrained(str(tmp_path / "md"), variant=path)
  assert md.cfg.text.block_input_lora == 2
  np.testing.assert_array_equal(md.params["vision"]["patch_emb"]["kernel"], params["vision"]["patch_emb"]["kernel"])
  x = np.random.default_rng(1).standard_normal((2, 7, tc.dim)).astype(np.float32)
  with jax.default_matmul_precision("highest"):
    got = TextDecoder(md.cfg.text).apply({"params": md.params["text"]}, x, prefix_len=3)["hidden"]
  want = reference_hidden(state, lora, tc, torch.tensor(x), 3)
  np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-4)
  plain = TextDecoder(tc).apply({"params": params["text"]}, x, prefix_len=3)["hidden"]
  assert float(np.abs(np.asarray(got) - np.asarray(plain)).max()) > 1e-2   # the variant does something
  out = md.query(np.zeros((30, 30, 3), np.uint8), "what?", max_tokens=2, temperature=0)
  assert isinstance(out["answer"], str)   # generation (prefill and decode with the cache) runs with the side branch


def test_bad_variants_are_refused(tmp_path):
  cfg, params, _ = tiny_model("tiny")
  lora = variant_state(params, cfg.text.n_layers)
  lora.pop("text.blocks.1.attn.qkv.B")
  with pytest.raises(CheckpointError, match="has no B"):
    lora_variant.from_variant_state(lora)
  extra = {k.replace("blocks.0.", "blocks.9."): v for k, v in variant_state(params, 1).items()}
  with pytest.raises(CheckpointError, match="blocks this model lacks"):
    lora_variant.apply_variant(cfg, params, lora_variant.from_variant_state(extra))
  with pytest.raises(ConfigError, match="MoE"):
    lora_variant.apply_variant(get_config("tiny-moe"), params, {})
  with pytest.raises(CheckpointError, match="not found"):
    lora_variant.load_variant(str(tmp_path / "missing.pt"))
