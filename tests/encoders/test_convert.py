"""Converter CLIs on tiny models saved in every supported format, checked against torch.

Formats: HF directories (sharded safetensors, sharded pytorch_model.bin), OpenAI/OpenCLIP state dicts
and TorchScript archives, big_vision .npz (loop and scanned). Each is converted with the CLI entry
point, loaded back with `load_model` and compared with the torch model that wrote it.
"""
import json
import os

import numpy as np
import pytest
import torch

from aajax.encoders.config import clip, siglip
from aajax.encoders.tiny_tokenizers import vocab_size_of, write_clip_tokenizer, write_siglip_tokenizer
from aajax.encoders.tokenizers import load_tokenizer
from aajax.model_dir import load_model
from tests.encoders import openai_clip_torch as oc
from tests.encoders.parity import assert_close, hf_outputs, run_model
from tests.encoders.test_tiny_parity import convert as convert_in_memory
from tests.encoders.test_tiny_parity import random_inputs
from tests.encoders.torch_models import random_hf_model
from weights_convert import big_vision, towers
from weights_convert.common import export_state

SIGLIP = siglip(64, 2, 4, 128, 8, 32, text_len=12, vocab=64)


def clip_config(vocab):
  return clip(64, 2, 4, 8, 32, 48, 2, 4, 40, vocab=vocab, text_len=12)


def run_cli(family, *args):
  return towers.main(family, [str(a) for a in args])


def save_hf(hf, path, shards=True):
  hf.save_pretrained(path, max_shard_size="100KB" if shards else "50GB")
  return path


def save_hf_bin(hf, path):
  """An HF directory with the older pytorch_model.bin weights, in two shards plus the index."""
  os.makedirs(path, exist_ok=True)
  hf.config.save_pretrained(path)
  state = hf.state_dict()
  names = sorted(state)
  half = len(names) // 2
  weight_map = {}
  for i, part in enumerate((names[:half], names[half:])):
    fname = f"pytorch_model-0000{i + 1}-of-00002.bin"
    torch.save({k: state[k] for k in part}, os.path.join(path, fname))
    weight_map.update({k: fname for k in part})
  with open(os.path.join(path, "pytorch_model.bin.index.json"), "w") as f:
    json.dump({"metadata": {}, "weight_map": weight_map}, f)
  return path


@pytest.fixture(scope="module")
def hf_siglip(tmp_path_factory):
  root = tmp_path_factory.mktemp("hf_siglip")
  hf = random_hf_model(SIGLIP)
  path = save_hf(hf, root / "hf")
  write_siglip_tokenizer(str(path))
  return hf, path


def test_hf_siglip_sharded_safetensors(hf_siglip, tmp_path):
  hf, src = hf_siglip
  assert len([f for f in os.listdir(src) if f.endswith(".safetensors")]) > 1  # really sharded
  assert run_cli("siglip", "--src", src, "--dst", tmp_path / "m") == 0
  model, params = load_model(str(tmp_path / "m"))
  assert model.cfg == SIGLIP
  images, ids = random_inputs(SIGLIP)
  assert_close(run_model(model, params, images, ids.astype(np.int32)), hf_outputs(hf, images, ids))
  # The tokenizer travelled with the model and tokenises exactly as transformers does.
  tok = load_tokenizer(str(tmp_path / "m"))
  import transformers
  ref = transformers.SiglipTokenizer.from_pretrained(str(src))
  texts = ["A photo of a CAT!", "a scratched metal surface " * 6]
  want = ref(texts, padding="max_length", max_length=SIGLIP.text.max_len, truncation=True)["input_ids"]
  np.testing.assert_array_equal(tok(texts), want)


def test_hf_clip_sharded_bin(tmp_path):
  tok_dir = write_clip_tokenizer(str(tmp_path / "tok"))
  cfg = clip_config(vocab_size_of(tok_dir))
  hf = random_hf_model(cfg)
  src = save_hf_bin(hf, tmp_path / "hf")
  assert run_cli("clip", "--src", src, "--dst", tmp_path / "m", "--tokenizer", tok_dir) == 0
  model, params = load_model(str(tmp_path / "m"))
  assert model.cfg == cfg
  tok = load_tokenizer(str(tmp_path / "m"))
  ids = tok(["a photo of a cat", "a broken screw on a table", "a dog"])
  images = random_inputs(cfg, batch=3)[0]
  assert_close(run_model(model, params, images, ids), hf_outputs(hf, images, ids))


def openai_model(act="quick_gelu", seed=0):
  torch.manual_seed(seed)
  model = oc.OpenAICLIP(embed_dim=40, image_size=32, patch=8, width=128, layers=2, text_width=64,
                        text_layers=2, vocab=99, context=12, act=act)
  return oc.randomize_(model, seed).eval()


def openai_outputs(model, images, ids):
  with torch.no_grad():
    x = torch.from_numpy(images).permute(0, 3, 1, 2)
    t = torch.from_numpy(np.asarray(ids, np.int64))
    img, img_hidden = model.encode_image(x)
    txt, txt_hidden = model.encode_text(t)
    unit = lambda v: v / torch.linalg.vector_norm(v, dim=-1, keepdim=True)
    logits = model.logit_scale.exp() * unit(txt) @ unit(img).t()
  return {"image": img, "text": txt, "logits": logits, "image_hidden": img_hidden, "text_hidden": txt_hidden}


def openai_ids(batch=3, vocab=99, length=12):
  ids = np.random.default_rng(1).integers(1, vocab - 2, (batch, length))
  ids[:, 0] = vocab - 2
  for i in range(batch):  # EOT (the largest id) at a different place in each row, then zeros
    ids[i, 4 + i], ids[i, 5 + i:] = vocab - 1, 0
  return ids.astype(np.int32)


@pytest.mark.parametrize("container", ["state_dict", "torchscript"])
def test_openai_clip(container, tmp_path):
  ref = openai_model()
  src = tmp_path / "clip.pt"
  if container == "state_dict":
    torch.save({"epoch": 3, "state_dict": {"module." + k: v for k, v in ref.state_dict().items()}}, src)
  else:
    oc.save_torchscript(openai_model(), 32, str(src))
  assert run_cli("clip", "--src", src, "--dst", tmp_path / "m") == 0
  model, params = load_model(str(tmp_path / "m"))
  assert (model.cfg.vision.act, model.cfg.vision.heads, model.cfg.text.heads) == ("quick_gelu", 2, 1)
  images, ids = random_inputs(model.cfg, batch=3)[0], openai_ids()
  assert_close(run_model(model, params, images, ids), openai_outputs(ref, images, ids))


def test_openai_clip_exact_gelu_at_a_new_resolution(tmp_path):
  """--act gelu --image_size 48: the 4x4 position grid becomes 6x6 as open_clip resizes it."""
  ref = openai_model(act="gelu")
  torch.save(ref.state_dict(), tmp_path / "clip.pt")
  assert run_cli("clip", "--src", tmp_path / "clip.pt", "--dst", tmp_path / "m", "--act", "gelu",
                 "--image_size", 48) == 0
  model, params = load_model(str(tmp_path / "m"))
  assert (model.cfg.vision.image_size, model.cfg.vision.act) == (48, "gelu")
  with torch.no_grad():
    ref.visual.positional_embedding = torch.nn.Parameter(oc.resize_pos_embed(ref.visual.positional_embedding, 6))
  images, ids = random_inputs(model.cfg, batch=2)[0], openai_ids(batch=2)
  assert_close(run_model(model, params, images, ids), openai_outputs(ref, images, ids))


@pytest.mark.parametrize("layout", ["loop", "scanned"])
def test_big_vision_npz(layout, hf_siglip, tmp_path):
  hf, hf_dir = hf_siglip
  _, params = convert_in_memory(SIGLIP, hf)
  state = export_state(params, big_vision.big_vision_rows(SIGLIP), big_vision.transforms(SIGLIP))
  if layout == "scanned":
    state = big_vision.scan(state)
    assert "img/Transformer/encoderblock/LayerNorm_0/scale" in state
  np.savez(tmp_path / "siglip.npz", **{"params/" + k: v for k, v in state.items()})
  assert run_cli("siglip", "--src", tmp_path / "siglip.npz", "--dst", tmp_path / "m",
                 "--tokenizer", hf_dir / "spiece.model") == 0
  model, params = load_model(str(tmp_path / "m"))
  assert model.cfg == SIGLIP
  assert load_tokenizer(str(tmp_path / "m")).family == "siglip"
  images, ids = random_inputs(SIGLIP)
  assert_close(run_model(model, params, images, ids.astype(np.int32)), hf_outputs(hf, images, ids))


# -- bad input: one clear message each, nothing written ------------------------------------------
def fails(capsys, family, src, dst, *extra):
  assert run_cli(family, "--src", src, "--dst", dst, *extra) == 2
  assert not os.path.exists(dst), "a failed conversion left output behind"
  assert not [f for f in os.listdir(os.path.dirname(dst)) if ".tmp-" in f]
  err = capsys.readouterr().err
  assert err.startswith("error: ") and "Traceback" not in err
  return err


def test_missing_source(tmp_path, capsys):
  assert "not found" in fails(capsys, "siglip", tmp_path / "nope", tmp_path / "m")


@pytest.mark.parametrize("name,content", [("model.safetensors", b"\x00garbage" * 10),
                                          ("clip.pt", b"PK\x03\x04truncated"),
                                          ("siglip.npz", b"not a zip")])
def test_corrupt_file(name, content, tmp_path, capsys):
  (tmp_path / name).write_bytes(content)
  err = fails(capsys, "clip", tmp_path / name, tmp_path / "m")
  assert name in err


def test_wrong_family(hf_siglip, tmp_path, capsys):
  err = fails(capsys, "clip", hf_siglip[1], tmp_path / "m")
  assert "SigLIP checkpoint" in err and "weights_convert.siglip" in err


def test_unknown_names(tmp_path, capsys):
  torch.save({"encoder.weight": torch.zeros(3, 3)}, tmp_path / "other.pt")
  assert "not a SigLIP or CLIP checkpoint" in fails(capsys, "clip", tmp_path / "other.pt", tmp_path / "m")


def test_wrong_missing_and_extra_tensors_are_named(tmp_path, capsys):
  state = openai_model().state_dict()
  state["visual.transformer.resblocks.1.mlp.c_fc.weight"] = torch.zeros(500, 128)
  state["transformer.resblocks.0.attn.in_proj_weight"] = torch.zeros(100, 64)
  del state["ln_final.bias"]
  state["visual.extra_head.weight"] = torch.zeros(2)
  torch.save(state, tmp_path / "clip.pt")
  err = fails(capsys, "clip", tmp_path / "clip.pt", tmp_path / "m")
  assert "visual.transformer.resblocks.1.mlp.c_fc.weight: expected (512, 128), found (500, 128)" in err
  assert "transformer.resblocks.0.attn.in_proj_weight: expected (192, 64), found (100, 64)" in err
  assert "missing tensor(s): ln_final.bias" in err
  assert "unexpected tensor(s): visual.extra_head.weight" in err


def test_existing_output_is_kept(hf_siglip, tmp_path, capsys):
  (tmp_path / "m").mkdir()
  (tmp_path / "m" / "keep.txt").write_text("mine")
  assert run_cli("siglip", "--src", hf_siglip[1], "--dst", tmp_path / "m") == 2
  assert "already exists" in capsys.readouterr().err
  assert (tmp_path / "m" / "keep.txt").read_text() == "mine"
