"""The decoder converter refuses bad input with one clear line and writes nothing."""
import json
import os

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from tests.decoder import hf_models
from weights_convert import decoder as convert_decoder


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
  src = tmp_path_factory.mktemp("llama")
  hf_models.save_random("llama", src)
  return src


def run(capsys, src, dst, *extra):
  code = convert_decoder.main(["--src", str(src), "--dst", str(dst), *extra])
  err = capsys.readouterr().err.strip()
  assert code == 2 and err.startswith("error: ") and "\n" not in err and not os.path.exists(dst)
  return err


def edited_copy(src, dst, config=None, state=None):
  os.makedirs(dst)
  with open(os.path.join(src, "config.json")) as f:
    hf = json.load(f)
  with open(os.path.join(dst, "config.json"), "w") as f:
    json.dump(config(hf) if config else hf, f)
  tensors = load_file(os.path.join(src, "model.safetensors"))
  save_file(state(tensors) if state else tensors, os.path.join(dst, "model.safetensors"))
  return dst


def test_missing_files(tmp_path, capsys, llama_dir):
  assert "checkpoint not found" in run(capsys, tmp_path / "nope", tmp_path / "out")
  lone = tmp_path / "lone"
  lone.mkdir()
  os.link(os.path.join(llama_dir, "model.safetensors"), lone / "model.safetensors")
  assert "config.json not found" in run(capsys, lone, tmp_path / "out")


def test_unknown_model_type(tmp_path, capsys, llama_dir):
  src = edited_copy(llama_dir, tmp_path / "src", config=lambda hf: {**hf, "model_type": "t5"})
  err = run(capsys, src, tmp_path / "out")
  assert "unknown model_type 't5'" in err and "llama" in err


def test_unsupported_rope_scaling(tmp_path, capsys, llama_dir):
  def scaled(hf):
    hf.pop("rope_parameters", None)
    return {**hf, "rope_scaling": {"rope_type": "llama3", "factor": 8.0}}
  src = edited_copy(llama_dir, tmp_path / "src", config=scaled)
  assert "rope type 'llama3'" in run(capsys, src, tmp_path / "out")


def test_mismatched_and_missing_tensors(tmp_path, capsys, llama_dir):
  def broken(state):
    state = dict(state)
    state["model.layers.0.self_attn.k_proj.weight"] = np.zeros((4, 32), np.float32)
    del state["model.layers.1.mlp.up_proj.weight"]
    state["model.extra.weight"] = np.zeros(3, np.float32)
    return state
  src = edited_copy(llama_dir, tmp_path / "src", state=broken)
  err = run(capsys, src, tmp_path / "out")
  assert "layers.0.self_attn.k_proj.weight: expected (16, 32), found (4, 32)" in err
  assert "missing tensor(s): layers.1.mlp.up_proj.weight" in err and "extra.weight" in err


def test_config_that_disagrees_with_the_weights(tmp_path, capsys, llama_dir):
  src = edited_copy(llama_dir, tmp_path / "src", config=lambda hf: {**hf, "num_key_value_heads": 4})
  assert "wrongly shaped" in run(capsys, src, tmp_path / "out")


def test_existing_output_is_kept(tmp_path, capsys, llama_dir):
  dst = tmp_path / "out"
  dst.mkdir()
  (dst / "keep").write_text("x")
  code = convert_decoder.main(["--src", str(llama_dir), "--dst", str(dst)])
  assert code == 2 and "already exists" in capsys.readouterr().err and (dst / "keep").exists()
