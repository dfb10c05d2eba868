"""Caption data: captions from the synthetic set's metadata, readers, tokenisation and loss masking."""
import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from PIL import Image

from aajax.captioning import data as cap_data
from aajax.captioning.prefix_vlm import shifted_cross_entropy
from aajax.errors import DataError


def test_synthetic_captions_name_class_defect_and_position():
  pairs = cap_data.synthetic_captions("train", image_size=64, classes=("brick",), n_per_class=10)
  captions = [p.caption for p in pairs]
  assert captions[0] == "brick wall without defects"
  assert captions[5].startswith("brick wall with a scratch at the ")
  assert {c.split(" at ")[0] for c in captions[5:]} == {f"brick wall with {p}" for p in cap_data.DEFECT_PHRASES.values()}
  mask = np.zeros((30, 30), np.uint8)
  mask[0:5, 25:30] = 1
  assert cap_data.position_phrase(mask) == "the top right"
  mask[:] = 0
  mask[14:16, 14:16] = 1
  assert cap_data.position_phrase(mask) == "the center"


def test_tokens_and_loss_mask_cover_caption_and_eos_only():
  tok = cap_data.WordTokenizer.from_captions(["a b c", "b d"])
  tokens, mask = cap_data.encode_captions(tok, ["a b c", "b d", "a b c d a b c d"], max_len=6)
  a, b, c, d = (tok.ids[w] for w in "abcd")
  np.testing.assert_array_equal(tokens[0], [tok.bos_id, a, b, c, tok.eos_id, tok.pad_id])
  np.testing.assert_array_equal(mask[0], [0, 1, 1, 1, 1, 0])   # BOS and padding are never targets
  np.testing.assert_array_equal(tokens[2], [tok.bos_id, a, b, c, d, tok.eos_id])   # cut, still ends with EOS
  assert tok.decode(tokens[1]) == "b d" and tok.encode("a zzz") == [a, tok.unk_id]


def test_masked_loss_equals_torch_cross_entropy_with_ignore_index():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3, 6, 11)).astype(np.float32)
  tok = cap_data.WordTokenizer([str(i) for i in range(7)])
  tokens, mask = cap_data.encode_captions(tok, ["0 1 2 3", "4", "5 6 0"], max_len=6)
  loss, acc = shifted_cross_entropy(jnp.asarray(logits), jnp.asarray(tokens), jnp.asarray(mask))
  targets = torch.from_numpy(np.where(mask[:, 1:] > 0, tokens[:, 1:], -100).astype(np.int64))
  want = torch.nn.functional.cross_entropy(torch.from_numpy(logits[:, :-1]).reshape(-1, 11), targets.reshape(-1),
                                           ignore_index=-100)
  np.testing.assert_allclose(float(loss), float(want), rtol=1e-6)
  logits[:, -1] += 100.0 * rng.normal(size=(3, 11))   # the last position predicts nothing
  logits[1, 2:] = 0.0                                  # padding after row 1's EOS
  assert float(shifted_cross_entropy(jnp.asarray(logits), jnp.asarray(tokens), jnp.asarray(mask))[0]) == pytest.approx(float(loss), rel=1e-6)
  assert 0.0 <= float(acc) <= 1.0


def test_pairs_from_jsonl_and_csv(tmp_path):
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "x.png")
  (tmp_path / "train.jsonl").write_text(json.dumps({"image": "x.png", "caption": "a dark square"}) + "\n")
  (tmp_path / "val.csv").write_text("image,caption\nx.png,another one\n")
  assert [p.caption for p in cap_data.read_pairs(str(tmp_path), "train.jsonl")] == ["a dark square"]
  pair, = cap_data.read_pairs(str(tmp_path), "val.csv")
  assert pair.load_image().shape == (8, 8, 3)
  (tmp_path / "bad.jsonl").write_text(json.dumps({"image": "missing.png", "caption": "x"}) + "\n")
  with pytest.raises(DataError, match="image not found"):
    cap_data.read_pairs(str(tmp_path), "bad.jsonl")
  (tmp_path / "bad2.jsonl").write_text('{"image": "x.png"}\n')
  with pytest.raises(DataError, match="needs 'image' and 'caption'"):
    cap_data.read_pairs(str(tmp_path), "bad2.jsonl")
  with pytest.raises(DataError, match="not found"):
    cap_data.read_pairs(str(tmp_path), "nope.jsonl")


def test_batches_resume_at_the_same_position():
  pairs = cap_data.synthetic_captions("train", image_size=32, classes=("grass",), n_per_class=6)
  tok = cap_data.WordTokenizer.from_captions(p.caption for p in pairs)
  it = cap_data.CaptionBatches(pairs, tok, 4, 32, 12, seed=1)
  next(it)
  state = it.get_state()
  want = next(it)
  got = next(cap_data.CaptionBatches(pairs, tok, 4, 32, 12, seed=1, start_state=state))
  np.testing.assert_array_equal(got["tokens"], want["tokens"])
  assert want["images"].shape == (4, 32, 32, 3) and want["loss_mask"].dtype == np.float32
