"""Tokenizers of both families against transformers, on small tokenizer files built by the test."""
import numpy as np
import pytest
import transformers

from aajax.encoders.tiny_tokenizers import write_clip_tokenizer, write_siglip_tokenizer
from aajax.encoders.tokenizers import load_tokenizer
from aajax.errors import AajaxError

TEXTS = ["A photo of a CAT!", "a  close-up photo of a scratched, metal surface", "",
         "a broken screw on a table " * 20, "ünïcödé wood texture 42"]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
  root = tmp_path_factory.mktemp("tok")
  return {"siglip": write_siglip_tokenizer(str(root / "siglip")), "clip": write_clip_tokenizer(str(root / "clip"))}


@pytest.mark.parametrize("max_len", [64, 16])
def test_siglip_matches_transformers(dirs, max_len):
  tok = load_tokenizer(dirs["siglip"], max_len=max_len)
  ref = transformers.SiglipTokenizer.from_pretrained(dirs["siglip"])
  ids = tok(TEXTS)
  assert ids.shape == (len(TEXTS), max_len) and ids.dtype == np.int32
  want = ref(TEXTS, padding="max_length", max_length=max_len, truncation=True)["input_ids"]
  np.testing.assert_array_equal(ids, want)
  # The tower pools the last position: it must hold EOS (=pad) for every text, long ones included.
  assert (ids[:, -1] == tok.eos_id).all() and tok.eos_id == 1
  long = ids[3]
  assert (long != tok.eos_id)[:-1].all(), "a too-long text keeps EOS last (sticky EOS)"
  # canonicalised: case and punctuation do not change the tokens
  np.testing.assert_array_equal(tok(["a photo of a cat"]), tok(["A photo, of a CAT!!"]))


def test_clip_matches_transformers(dirs):
  tok = load_tokenizer(dirs["clip"])
  ref = transformers.CLIPTokenizer.from_pretrained(dirs["clip"])
  ids = tok(TEXTS)
  assert ids.shape == (len(TEXTS), 77)
  np.testing.assert_array_equal(ids, ref(TEXTS, padding="max_length", max_length=77, truncation=True)["input_ids"])
  sot, eot = ref.bos_token_id, ref.eos_token_id
  assert eot == tok.vocab_size - 1, "EOT is the largest id, so argmax pooling finds it"
  assert (ids[:, 0] == sot).all()
  first_eot = ids.argmax(axis=1)
  assert (ids[np.arange(len(TEXTS)), first_eot] == eot).all()
  assert first_eot[2] == 1 and first_eot[3] == 76, "empty text: SOT EOT; too long: EOT kept last"


def test_errors(dirs, tmp_path):
  with pytest.raises(AajaxError, match="not found"):
    load_tokenizer(str(tmp_path / "nope"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(AajaxError, match="no tokenizer"):
    load_tokenizer(str(tmp_path / "empty"))
  with pytest.raises(AajaxError, match="embeds only 99"):
    load_tokenizer(dirs["clip"], vocab_size=99)
  with pytest.raises(AajaxError, match="list of strings"):
    load_tokenizer(dirs["siglip"])([1, 2])
