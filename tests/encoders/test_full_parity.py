"""Full-size random-init towers saved in the real formats, converted by the CLI, compared with torch.

    python -m pytest -q -m full tests/encoders/test_full_parity.py   # one at a time: several GiB each

Every real tensor name and shape is exercised without a download: SigLIP so400m-patch14-384 (HF,
sharded safetensors), SigLIP base-patch16-224 as a scanned big_vision .npz, CLIP ViT-L/14-336 as an
HF directory, and as an OpenAI TorchScript archive with fp16 weights converted with
`--act gelu --image_size 518` (AA-CLIP's setting: the 24x24 position grid resized to 37x37 exactly
as open_clip's `resize_pos_embed`, torch bicubic with antialias).

Tolerance (fp32, highest matmul precision, CPU): pooled embeddings within 1e-5 of their largest
magnitude; hidden states of all 24-27 blocks within 2e-5 (summation order differs between XLA and
torch and accumulates over depth); logits within 1e-4 absolute. Peak memory is about 2.5x the fp32
model (torch model, the checkpoint being read, then the converted params): ~9 GiB for so400m.
"""
import gc

import numpy as np
import pytest
import torch

from aajax.encoders.config import get_config
from aajax.model_dir import load_model
from tests.encoders import openai_clip_torch as oc
from tests.encoders.parity import assert_close, hf_outputs, rel_err, run_model
from tests.encoders.test_convert import openai_outputs, run_cli
from tests.encoders.test_tiny_parity import random_inputs
from tests.encoders.torch_models import random_hf_model
from weights_convert import big_vision
from weights_convert.common import export_state

pytestmark = pytest.mark.full
HIDDEN_RTOL = 2e-5


def report(got, want):
  """Print the measured errors (pytest -s) before asserting, so a regression shows its size."""
  to_np = lambda x: x.detach().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
  errs = {k: rel_err(to_np(got[k]), to_np(want[k])) for k in ("image", "text", "logits")}
  errs["hidden"] = max(rel_err(to_np(g), to_np(w)) for key in ("image_hidden", "text_hidden")
                       for g, w in zip(got[key], want[key]))
  print({k: f"{v:.1e}" for k, v in errs.items()})


def check(model_dir, want, images, ids):
  model, params = load_model(str(model_dir))
  got = run_model(model, params, images, np.asarray(ids, np.int32))
  report(got, want)
  assert_close(got, want, rtol=1e-5, hidden_rtol=HIDDEN_RTOL)
  return model


@pytest.mark.parametrize("name", ["siglip-so400m-patch14-384", "clip-vit-large-patch14-336"])
def test_hf_directory(name, tmp_path):
  cfg = get_config(name)
  hf = random_hf_model(cfg)
  hf.save_pretrained(tmp_path / "hf", max_shard_size="1GB")
  images, ids = random_inputs(cfg, batch=1)
  ids = np.concatenate([ids, random_inputs(cfg, batch=2, seed=1)[1]])
  want = hf_outputs(hf, images, ids)
  del hf
  gc.collect()
  family = cfg.family
  assert run_cli(family, "--src", tmp_path / "hf", "--dst", tmp_path / "m") == 0
  model = check(tmp_path / "m", want, images, ids)
  assert model.cfg == cfg


def test_big_vision_scanned_npz_siglip_base(tmp_path):
  cfg = get_config("siglip-base-patch16-224")
  hf = random_hf_model(cfg)
  images, ids = random_inputs(cfg, batch=2)
  want = hf_outputs(hf, images, ids)
  from tests.encoders.test_tiny_parity import convert as convert_in_memory
  _, params = convert_in_memory(cfg, hf)
  del hf
  state = big_vision.scan(export_state(params, big_vision.big_vision_rows(cfg), big_vision.transforms(cfg)))
  del params
  np.savez(tmp_path / "siglip_b16.npz", **{"params/" + k: v for k, v in state.items()})
  del state
  gc.collect()
  assert run_cli("siglip", "--src", tmp_path / "siglip_b16.npz", "--dst", tmp_path / "m") == 0
  assert check(tmp_path / "m", want, images, ids).cfg == cfg


def test_openai_torchscript_fp16_at_518px_exact_gelu(tmp_path):
  torch.manual_seed(0)
  ref = oc.OpenAICLIP(embed_dim=768, image_size=336, patch=14, width=1024, layers=24, text_width=768,
                      text_layers=12, act="gelu")
  oc.randomize_(ref)
  with torch.no_grad():  # OpenAI releases fp16 values; the converter must read them exactly
    for p in ref.parameters():
      p.copy_(p.half().float())
  oc.save_torchscript(ref.half(), 336, str(tmp_path / "ViT-L-14-336px.pt"))
  ref = ref.float().eval()
  with torch.no_grad():
    ref.visual.positional_embedding = torch.nn.Parameter(oc.resize_pos_embed(ref.visual.positional_embedding, 37))
  cfg = get_config("clip-vit-large-patch14-336")
  images = random_inputs(cfg, batch=1, size=518)[0]
  ids = random_inputs(cfg, batch=2)[1]
  want = openai_outputs(ref, images, ids)
  del ref
  gc.collect()
  assert run_cli("clip", "--src", tmp_path / "ViT-L-14-336px.pt", "--dst", tmp_path / "m", "--act", "gelu",
                 "--image_size", 518) == 0
  model = check(tmp_path / "m", want, images, ids)
  assert (model.cfg.vision.image_size, model.cfg.vision.act, model.cfg.text.act) == (518, "gelu", "gelu")
