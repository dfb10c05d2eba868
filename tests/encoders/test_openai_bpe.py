"""OpenAI's own vocabulary file (bpe_simple_vocab_16e6.txt.gz): read into the same tokenizer as
vocab.json + merges.txt, with the ids OpenAI's simple tokenizer gives (a reference written here
from its algorithm), and bundled by the converters as vocab.json + merges.txt."""
import gzip
import html
import math

import numpy as np
import pytest
import regex

from aajax.encoders.tiny_tokenizers import bytes_to_unicode, write_clip_tokenizer
from aajax.encoders.tokenizers import OPENAI_BPE_MERGES, load_tokenizer
from aajax.errors import CheckpointError, ConfigError
from weights_convert.towers import tokenizer_files

TEXTS = ["A photo of a CAT!", "a  close-up photo of a scratched, metal surface", "",
         "a broken screw on a table " * 20, "it's a damaged bottle 42", "&amp; a flawless wooden texture"]
PATTERN = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  root = tmp_path_factory.mktemp("bpe")
  folder = write_clip_tokenizer(str(root / "clip"), num_merges=80)
  merges = open(f"{folder}/merges.txt", encoding="utf-8").read().split("\n")[1:]
  gz = root / "openai" / "bpe_simple_vocab_16e6.txt.gz"
  gz.parent.mkdir()
  with gzip.open(gz, "wt", encoding="utf-8") as f:
    f.write('"bpe_simple_vocab_16e6.txt#version: 0.2\n' + "\n".join(merges))
  return folder, str(gz)


def openai_encode(gz_path, text):
  """OpenAI's SimpleTokenizer.encode with SOT/EOT (its ftfy step is the identity on these texts)."""
  merges = gzip.open(gz_path).read().decode("utf-8").split("\n")[1:OPENAI_BPE_MERGES + 1]
  merges = [tuple(m.split()) for m in merges if m]
  byte_encoder = bytes_to_unicode()
  vocab = list(byte_encoder.values())
  vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
  encoder, ranks = {v: i for i, v in enumerate(vocab)}, {m: i for i, m in enumerate(merges)}

  def bpe(token):
    word = tuple(token[:-1]) + (token[-1] + "</w>",)
    while len(word) > 1:
      first, second = min(zip(word, word[1:]), key=lambda p: ranks.get(p, math.inf))
      if (first, second) not in ranks:
        break
      out, i = [], 0
      while i < len(word):
        if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
          out.append(first + second)
          i += 2
        else:
          out.append(word[i])
          i += 1
      word = tuple(out)
    return word

  text = regex.sub(r"\s+", " ", html.unescape(html.unescape(text))).strip().lower()
  ids = [encoder["<|startoftext|>"]]
  for token in regex.findall(PATTERN, text):
    ids += [encoder[t] for t in bpe("".join(byte_encoder[b] for b in token.encode("utf-8")))]
  return ids + [encoder["<|endoftext|>"]]


def test_gz_gives_openai_ids_and_equals_the_json_files(files):
  folder, gz = files
  from_gz, from_folder = load_tokenizer(gz), load_tokenizer(folder)
  assert from_gz.family == "clip" and from_gz.vocab_size == from_folder.vocab_size
  ids = from_gz(TEXTS)
  np.testing.assert_array_equal(ids, from_folder(TEXTS))
  np.testing.assert_array_equal(load_tokenizer(str(gz).rsplit("/", 1)[0])(TEXTS), ids)   # its folder
  for text, row in zip(TEXTS, ids):
    want = openai_encode(gz, text)
    if len(want) > 77:   # too long: cut, EOT kept last
      want = want[:76] + want[-1:]
    assert list(row[:len(want)]) == want, text
    assert (row[len(want):] == from_gz.eos_id).all()


def test_converters_bundle_it_as_json_files(files):
  folder, gz = files
  bundled = tokenizer_files(gz)
  assert sorted(bundled) == ["tokenizer/merges.txt", "tokenizer/tokenizer_config.json", "tokenizer/vocab.json"]
  for name in ("vocab.json", "merges.txt"):
    assert open(bundled[f"tokenizer/{name}"], encoding="utf-8").read() == open(f"{folder}/{name}", encoding="utf-8").read()


def test_bad_files(files, tmp_path):
  _, gz = files
  with pytest.raises(ConfigError, match="CLIP"):
    load_tokenizer(gz, family="siglip")
  broken = tmp_path / "broken.txt.gz"
  broken.write_bytes(b"not gzip at all")
  with pytest.raises(CheckpointError, match="cannot read"):
    load_tokenizer(str(broken))
  wrong = tmp_path / "wrong.txt.gz"
  with gzip.open(wrong, "wt") as f:
    f.write("header\na b c\n")
  with pytest.raises(CheckpointError, match="not OpenAI's BPE vocabulary"):
    load_tokenizer(str(wrong))
