"""The stage-B LoRA exported in Moondream's variant format (`aajax.vlm.lora_variant`) and read back:
the reference's formulas on the exported tensors equal the aajax adapters; an ordinary LoRA on proj
has no variant equivalent and is refused."""
import jax
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from aajax.aa_moondream import exported
from aajax.errors import CheckpointError, ConfigError
from aajax.nn import lora
from aajax.vlm import lora_variant
from tests.aa_moondream.helpers import tiny_params
from tests.aa_moondream.test_lora import trained_lora


def test_export_matches_the_reference_formula_and_reads_back(tmp_path):
  cfg, md, head = tiny_params()
  _, ab = trained_lora(md, cfg, 4)
  trained = exported.TrainedAAMoondream(cfg, md, head, ab, None, {"kind": "head"}, {}, {})
  path = exported.write_variant(trained, str(tmp_path / "final.pt"))
  state = torch.load(path, weights_only=True)   # what the reference does with a downloaded variant
  n = cfg.moondream.text.n_layers
  assert len(state) == 4 * 2 * n and set(k.split(".")[-1] for k in state) == {"A", "B"}
  x = torch.tensor(np.random.default_rng(0).standard_normal((3, cfg.moondream.text.dim)).astype(np.float32))
  for i in range(n):
    ad = ab[f"blocks_{i}"]["attn"]["qkv"]
    want = np.asarray(lora.lora_delta(jax.numpy.asarray(x.numpy()), ad, cfg.lora.scale))
    got = F.linear(F.linear(x, state[f"text.blocks.{i}.attn.qkv.A"]), state[f"text.blocks.{i}.attn.qkv.B"])
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)
    assert not state[f"text.blocks.{i}.attn.proj.B"].any()   # present (the reference reads it), zero
  back = lora_variant.load_variant(path)
  md_cfg, merged = lora_variant.apply_variant(cfg.moondream, md, back)
  assert md_cfg == cfg.moondream   # zero proj pairs: no side branch
  want = lora.merge(md["text"], ab, cfg.lora)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), merged["text"], want)

  raw = {k.replace("text.blocks", "text_model.transformer.h").replace(".attn.", ".mixer.").replace(".qkv.", ".Wqkv."): v
         for k, v in state.items()}   # the names before the reference's renaming read the same
  jax.tree.map(np.testing.assert_array_equal, lora_variant.from_variant_state(raw), back)


def test_bad_adapters_and_files_are_refused(tmp_path):
  cfg, md, _ = tiny_params()
  four = lora.LoraConfig(rank=2, alpha=2.0, targets=(r"attn/(qkv|proj)$",))
  ab = jax.tree.map(lambda x: x + 0.1, lora.init_lora(jax.random.PRNGKey(0), md["text"], four))
  with pytest.raises(ConfigError, match="block input"):
    lora_variant.to_variant_state(ab, four.scale, md["text"])
  state = {"text.blocks.0.attn.qkv.A": np.ones((2, 4), np.float32), "text.blocks.0.attn.qkv.B": np.ones((4, 3), np.float32)}
  with pytest.raises(CheckpointError, match="not \\[r, in\\]"):
    lora_variant.from_variant_state(state)
  with pytest.raises(CheckpointError, match="not a Moondream text LoRA"):
    lora_variant.from_variant_state({"vision.blocks.0.attn.qkv.A": np.ones((1, 1))})
  (tmp_path / "junk.pt").write_bytes(b"not a torch file")
  with pytest.raises(CheckpointError, match="cannot read"):
    lora_variant.load_variant(str(tmp_path / "junk.pt"))
