"""End to end on a tiny converted model: caption, query, detect, point; the detect loop and region
heads against the torch reference; bad input."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.numpy import save_file

from aajax.errors import CheckpointError, InputError
from aajax.region import RegionModel, coordinate_from_logits, size_from_logits
from aajax.vlm import crops as C
from aajax.vlm.moondream import Moondream
from tests.moondream import torch_reference as ref
from tests.moondream.helpers import tiny_model, write_tiny_tokenizer
from weights_convert import moondream as conv


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
  cfg, params, state = tiny_model("tiny")
  src = tmp_path_factory.mktemp("src")
  save_file({"model." + k: v for k, v in state.items()}, str(src / "model.safetensors"))
  write_tiny_tokenizer(str(src / "tokenizer.json"))
  dst = tmp_path_factory.mktemp("out") / "tiny_md"
  assert conv.main(["--src", str(src), "--dst", str(dst), "--config", "tiny"]) == 0
  return str(dst)


@pytest.fixture(scope="module")
def md(tiny_dir):
  return Moondream.from_pretrained(tiny_dir)


def image(seed=0, size=(60, 80)):
  return Image.fromarray(np.random.default_rng(seed).integers(0, 255, size + (3,), dtype=np.uint8))


def test_converted_params_equal_the_originals(md):
  _, params, _ = tiny_model("tiny")
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), md.params, params)


def test_caption_query_greedy_and_streaming(md):
  img = image()
  greedy = dict(temperature=0.0, max_tokens=12)
  cap = md.caption(img, **greedy)
  assert isinstance(cap["caption"], str)
  streamed = "".join(md.caption(img, stream=True, **greedy)["caption"])
  assert streamed == cap["caption"]
  enc = md.encode_image(img)
  assert md.caption(enc, **greedy) == cap  # an encoded image is reusable
  ans = md.query(enc, "what is in the image?", logprobs=True, **greedy)
  assert len(ans["tokens"]) == len(ans["logprobs"]) <= 12
  assert all(lp <= 0 for lp in ans["logprobs"])
  assert md.query(None, "what is in the image?", **greedy)["answer"] is not None  # text only


def test_sampling_is_seeded(md):
  img = image(1)
  a = md.caption(img, temperature=1.0, top_p=0.9, seed=3, max_tokens=10, logprobs=True)
  b = md.caption(img, temperature=1.0, top_p=0.9, seed=3, max_tokens=10, logprobs=True)
  assert a == b


def test_batch_equals_single_calls(md):
  imgs = [image(2, (40, 30)), image(3, (90, 120))]
  kw = dict(temperature=0.0, max_tokens=8, logprobs=True)
  batch = md.query(imgs, ["describe the picture", "how many birds are there"], **kw)
  for img, q, got in zip(imgs, ["describe the picture", "how many birds are there"], batch):
    one = md.query(img, q, **kw)
    assert one["tokens"] == got["tokens"]
    np.testing.assert_allclose(one["logprobs"], got["logprobs"], atol=1e-4)
  # one image, several questions
  two = md.query(imgs[0], ["describe the picture", "what is in the image?"], **kw)
  assert len(two) == 2 and two[0]["tokens"] == batch[0]["tokens"]


def test_detect_and_point_shapes(md):
  img = image(4)
  det = md.detect(img, "cat", max_objects=3)
  assert len(det["objects"]) <= 3
  for box in det["objects"]:
    assert set(box) == {"x_min", "y_min", "x_max", "y_max"} and box["x_min"] <= box["x_max"]
  pts = md.point([img, image(5)], "dog", max_objects=2)
  assert len(pts) == 2 and all(len(p["points"]) <= 2 for p in pts)
  assert md.detect(img, "cat", max_objects=0) == {"objects": []}


def reference_points(state, cfg, tok, img, obj, with_size, max_objects):
  """The reference's greedy loop, recomputing the whole sequence every step (no cache)."""
  vc, tc = cfg.vision, cfg.text
  crops, tiling = C.overlap_crop_image(C.to_rgb(img), vc)
  with torch.no_grad():
    img_tok = ref.image_tokens(state, vc, torch.from_numpy(C.normalize(crops)).permute(0, 3, 1, 2), tiling)
    prompt = tok.object_prompt("detect" if with_size else "point", obj)
    seq = torch.cat([ref.embed(state, [cfg.tokenizer.bos_id]), img_tok, ref.embed(state, prompt)])[None]

    def step(seq):
      h = ref.text_hidden(state, tc, seq, cfg.prefix_len)
      return h[0, -1], ref.text_logits(state, h[0, -1])
    hidden, logits = step(seq)
    out = []
    while int(logits.argmax()) != cfg.tokenizer.eos_id and len(out) < max_objects:
      x = ref.decode_head(state, "coord_decoder", hidden, True).argmax() / cfg.region.coord_out_dim
      seq = torch.cat([seq, ref.encode_coordinate(state, x.reshape(1, 1, 1))], 1)
      hidden, logits = step(seq)
      y = ref.decode_head(state, "coord_decoder", hidden, True).argmax() / cfg.region.coord_out_dim
      seq = torch.cat([seq, ref.encode_coordinate(state, y.reshape(1, 1, 1))], 1)
      hidden, logits = step(seq)
      if with_size:
        s = ref.decode_head(state, "size_decoder", hidden, True).view(2, -1).argmax(-1).float()
        wh = 2.0 ** (10 * s / (cfg.region.size_out_dim // 2 - 1) - 10)
        seq = torch.cat([seq, ref.encode_size(state, wh.reshape(1, 1, 2))], 1)
        hidden, logits = step(seq)
        out.append((float(x), float(y), float(wh[0]), float(wh[1])))
      else:
        out.append((float(x), float(y)))
  return out


@pytest.mark.parametrize("with_size", [True, False])
def test_point_loop_matches_reference(md, with_size):
  """Biased eos logit so the random model emits a few objects, then compare every coordinate."""
  cfg, params, state = tiny_model("tiny")
  eos = cfg.tokenizer.eos_id
  state = dict(state)
  bias = state["text.lm_head.bias"].copy()
  bias[eos] = -50.0  # never stop early: max_objects bounds the loop
  state["text.lm_head.bias"] = bias
  params = jax.tree.map(lambda a: a, params)
  params["text"]["lm_head"]["bias"] = bias
  img = image(6)
  want = reference_points(state, cfg, md.tokenizer, img, "cat", with_size, 3)
  from aajax.vlm import moondream as api
  with jax.default_matmul_precision("highest"):
    got = (api.detect if with_size else api.point)(md.fns, params, md.tokenizer, [img], "cat", 3)[0]
  got = got["objects" if with_size else "points"]
  assert len(got) == len(want) == 3
  for g, w in zip(got, want):
    if with_size:
      x, y, bw, bh = w
      np.testing.assert_allclose([g["x_min"], g["y_min"], g["x_max"], g["y_max"]],
                                 [x - bw / 2, y - bh / 2, x + bw / 2, y + bh / 2], rtol=1e-6, atol=1e-6)
    else:
      np.testing.assert_allclose([g["x"], g["y"]], w, rtol=1e-6)


@pytest.mark.parametrize("mlp_heads", [True, False])
def test_region_heads_match_reference(mlp_heads):
  cfg, params, state = tiny_model("tiny", 0, region_mlp=mlp_heads)
  rc, p = cfg.region, {"params": params["region"]}
  rng = np.random.default_rng(7)
  hidden = rng.standard_normal((3, rc.dim)).astype(np.float32)
  coord, size = rng.random((3, 1)).astype(np.float32), rng.random((3, 2)).astype(np.float32)
  m = RegionModel(rc)
  with jax.default_matmul_precision("highest"):
    got = [m.apply(p, hidden, method=RegionModel.decode_coordinate),
           m.apply(p, hidden, method=RegionModel.decode_size),
           m.apply(p, coord, method=RegionModel.encode_coordinate),
           m.apply(p, size, method=RegionModel.encode_size)]
  with torch.no_grad():
    h = torch.from_numpy(hidden)
    want = [ref.decode_head(state, "coord_decoder", h, mlp_heads),
            ref.decode_head(state, "size_decoder", h, mlp_heads).view(3, 2, -1),
            ref.encode_coordinate(state, torch.from_numpy(coord)), ref.encode_size(state, torch.from_numpy(size))]
  for g, w in zip(got, want):
    np.testing.assert_allclose(np.asarray(g), w.numpy(), rtol=2e-5, atol=2e-5)


def test_bin_decoding_rules():
  logits = jnp.zeros((1024,)).at[513].set(1.0)
  assert float(coordinate_from_logits(logits)) == 513 / 1024
  sizes = jnp.zeros((2, 1024)).at[0, 1023].set(1.0).at[1, 0].set(1.0)
  np.testing.assert_allclose(np.asarray(size_from_logits(sizes, "log")), [1.0, 2.0 ** -10])
  np.testing.assert_allclose(np.asarray(size_from_logits(sizes, "linear")), [1023 / 1024, 0.0])


def test_bad_input_messages(md):
  img = image()
  with pytest.raises(InputError, match="empty"):
    md.query(img, "   ")
  with pytest.raises(InputError, match="caption length"):
    md.caption(img, length="epic")
  with pytest.raises(InputError, match="does not fit the context"):
    md.query(img, "cat " * 400)
  with pytest.raises(InputError, match="top_p"):
    md.caption(img, top_p=0.0)
  with pytest.raises(InputError, match="2 prompts for 3 images"):
    md.query([img, img, img], ["a", "b"])
  with pytest.raises(InputError, match="expected a PIL image"):
    md.caption("picture.jpg")
  for mode in ("RGBA", "L", "P", "I;16"):
    assert isinstance(md.caption(img.convert(mode) if mode != "I;16" else
                                 Image.fromarray(np.zeros((9, 9), np.uint16)), temperature=0, max_tokens=2)["caption"], str)


def test_checkpoint_of_another_generation_is_refused(tmp_path):
  _, _, state = tiny_model("tiny-moe")
  state = dict(state)  # the cached one is shared
  save_file(state, str(tmp_path / "model.safetensors"))
  with pytest.raises(CheckpointError, match="Moondream 3 .* but the config is Moondream 2"):
    conv.convert(str(tmp_path), str(tmp_path / "out"), config="tiny")
  assert not os.path.exists(tmp_path / "out")
  state.pop("text.blocks.0.attn.qkv.bias")
  save_file(state, str(tmp_path / "model.safetensors"))
  with pytest.raises(CheckpointError, match="1 missing tensor.*text.blocks.0.attn.qkv.bias"):
    conv.convert(str(tmp_path), str(tmp_path / "out"), config="tiny-moe")


def test_legacy_names_and_int4_are_read():
  cfg, params, state = tiny_model("tiny")
  legacy = {}
  for k, v in state.items():
    k2 = (k.replace("vision.blocks.", "vision_encoder.encoder.model.visual.blocks.").replace(".ln1.", ".norm1.")
          .replace(".ln2.", ".norm2.").replace("text.blocks.", "text_model.transformer.h.")
          .replace(".attn.qkv.", ".mixer.Wqkv.").replace(".attn.proj.", ".mixer.out_proj.")
          if k.startswith(("vision.blocks.", "text.blocks.")) else k)
    legacy[k2.replace("text_model.transformer.", "text_model._orig_mod.transformer.")] = v
  ren = {"vision.patch_emb.": "vision_encoder.encoder.model.visual.patch_embed.linear.",
         "vision.post_ln.": "vision_encoder.encoder.model.visual.norm.", "vision.proj_mlp.": "vision_encoder.projection.mlp.",
         "text.post_ln.": "text_model.lm_head.ln.", "text.lm_head.": "text_model.lm_head.linear.",
         "region.coord_encoder.": "region_model.coordinate_encoder.", "region.coord_decoder.": "region_model.coordinate_decoder.",
         "region.size_encoder.": "region_model.size_encoder.", "region.size_decoder.": "region_model.size_decoder."}
  out = {}
  for k, v in legacy.items():
    for a, b in ren.items():
      if k.startswith(a):
        k = b + k[len(a):]
    out[k] = v
  out["vision_encoder.encoder.model.visual.pos_embed"] = out.pop("vision.pos_emb")
  out["text_model.transformer.embd.wte.weight"] = out.pop("text.wte")
  out["region_model.coordinate_features.weight"] = out.pop("region.coord_features").T
  out["region_model.size_features.weight"] = out.pop("region.size_features").T
  # int4 at rest for one linear: groups of 128 along the flattened weight, high nibble first
  fc1 = "text_model._orig_mod.transformer.h.0.mlp.fc1.weight"
  w = out.pop(fc1)
  q = np.random.default_rng(0).integers(0, 16, w.size).reshape(-1, 128).astype(np.uint8)
  scale, zero = np.full((len(q), 1), 0.01, np.float32), np.full((len(q), 1), 8.0, np.float32)
  half = len(q) // 2
  out[fc1 + ".packed"], out[fc1 + ".scale"], out[fc1 + ".zero_point"] = (q[:half] << 4) | q[half:], scale, zero
  _, got = conv.convert_state(out, cfg)
  want_fc1 = ((q.astype(np.float32) - 8.0) * 0.01).reshape(w.shape).T
  np.testing.assert_allclose(got["text"]["blocks_0"]["mlp"]["fc1"]["kernel"], want_fc1, rtol=1e-6)
  got["text"]["blocks_0"]["mlp"]["fc1"]["kernel"] = params["text"]["blocks_0"]["mlp"]["fc1"]["kernel"]
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), got, params)


def test_bfloat16_model_runs_close_to_float32(tiny_dir, md):
  md16 = Moondream.from_pretrained(tiny_dir, dtype="bfloat16")
  leaves = jax.tree.leaves(md16.params)
  assert all(a.dtype == jnp.bfloat16 for a in leaves)
  img = image(9)
  kw = dict(temperature=0.0, max_tokens=4, logprobs=True)
  a, b = md.query(img, "what is in the image?", **kw), md16.query(img, "what is in the image?", **kw)
  assert len(b["tokens"]) == len(b["logprobs"]) and np.isfinite(b["logprobs"]).all()
  assert abs(a["logprobs"][0] - b["logprobs"][0]) < 0.5


def test_query_with_spatial_refs_matches_reference(md):
  """Points and boxes in the prompt are fed as region encodings at their placeholder positions."""
  cfg, _, state = tiny_model("tiny")
  img, refs = image(10), [(0.25, 0.5), (0.1, 0.2, 0.6, 0.9)]
  got = md.query(img, "what is in the image?", spatial_refs=refs, temperature=0.0, max_tokens=1, logprobs=True)
  prompt = md.tokenizer.query_prompt("what is in the image?", refs)
  tc = cfg.tokenizer
  assert prompt[3:8] == [tc.coord_id, tc.coord_id, tc.coord_id, tc.coord_id, tc.size_id]
  crops, tiling = C.overlap_crop_image(C.to_rgb(img), cfg.vision)
  with torch.no_grad():
    img_tok = ref.image_tokens(state, cfg.vision, torch.from_numpy(C.normalize(crops)).permute(0, 3, 1, 2), tiling)
    emb = ref.embed(state, prompt)
    coords = torch.tensor([0.25, 0.5, 0.35, 0.55]).reshape(4, 1)
    emb[3:7] = ref.encode_coordinate(state, coords)
    emb[7] = ref.encode_size(state, torch.tensor([[0.5, 0.7]]))[0]
    seq = torch.cat([ref.embed(state, [tc.bos_id]), img_tok, emb])[None]
    logits = ref.text_logits(state, ref.text_hidden(state, cfg.text, seq, cfg.prefix_len)[0, -1])
  assert got["tokens"] == [int(logits.argmax())]
  np.testing.assert_allclose(got["logprobs"][0], float(torch.log_softmax(logits, -1).max()), atol=1e-4)
  with pytest.raises(InputError, match="not a point"):
    md.query(img, "where?", spatial_refs=[(0.1, 0.2, 0.3)])
  with pytest.raises(InputError, match="only be used with an image"):
    md.query(None, "where?", spatial_refs=[(0.1, 0.2)])


def test_moondream3_training_names_are_read():
  cfg, params, state = tiny_model("tiny-moe")
  out = {}
  for k, v in state.items():
    k2 = k.replace("text.blocks.", "text_model.transformer.h.").replace(".mlp.router.", ".gate.")
    k2 = k2.replace(".mlp.fc1.weight", ".mlp.experts.weight") if v.ndim == 3 else k2
    k2 = k2.replace(".mlp.fc2.weight", ".mlp.output_experts.weight") if v.ndim == 3 else k2
    k2 = k2.replace(".attn.tau.alpha", ".tau_alpha").replace("region.coord_decoder.", "region_model.coordinate_head.")
    k2 = k2.replace("region.size_decoder.", "region_model.size_head.").replace("region.ln.", "region_model.ln.")
    if k2.endswith(".attn.tau.wv"):
      continue
    if k2.endswith(".attn.tau.wq"):  # fused: wq rows then wv rows
      k2, v = k2.replace(".attn.tau.wq", ".tau_wqwv"), np.concatenate([v, state[k[:-2] + "wv"]])
    out[k2.replace("text_model.transformer.h.", "text.blocks.") if k2.startswith("text_model.transformer.h.") and
        ".tau_" not in k2 and ".gate." not in k2 and "experts" not in k2 else k2] = v
  assert any(".gate." in k for k in out) and any("tau_wqwv" in k for k in out)
  _, got = conv.convert_state(out, cfg)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), got, params)


def test_reasoning_grounding_matches_reference(md):
  """With the coordinate id made the likeliest token, every reasoning step reads a coordinate from
  the hidden state and feeds its encoding back: compare those coordinates with the reference loop."""
  cfg, params, state = tiny_model("tiny")
  tc, steps_n = cfg.tokenizer, 4
  state, params = dict(state), jax.tree.map(lambda a: a, params)
  bias = state["text.lm_head.bias"].copy()
  bias[tc.coord_id] = 50.0
  state["text.lm_head.bias"] = params["text"]["lm_head"]["bias"] = bias
  img, question = image(11), "how many birds are there"
  from aajax.vlm import moondream as api
  with jax.default_matmul_precision("highest"):
    got = api.query(md.fns, params, md.tokenizer, [img], question, reasoning=True, temperature=0.0,
                    max_tokens=steps_n)[0]
  crops, tiling = C.overlap_crop_image(C.to_rgb(img), cfg.vision)
  with torch.no_grad():
    img_tok = ref.image_tokens(state, cfg.vision, torch.from_numpy(C.normalize(crops)).permute(0, 3, 1, 2), tiling)
    prompt = md.tokenizer.query_prompt(question, reasoning=True)
    assert prompt[-2:] == [tc.answer_id, tc.thinking_id]
    seq = torch.cat([ref.embed(state, [tc.bos_id]), img_tok, ref.embed(state, prompt)])[None]
    values = []
    for _ in range(steps_n):
      h = ref.text_hidden(state, cfg.text, seq, cfg.prefix_len)[0, -1]
      if _ == 0:
        assert int(ref.text_logits(state, h).argmax()) == tc.coord_id
      v = ref.decode_head(state, "coord_decoder", h, True).argmax() / cfg.region.coord_out_dim
      values.append(float(v))
      seq = torch.cat([seq, ref.encode_coordinate(state, v.reshape(1, 1, 1))], 1)
  assert got["reasoning"]["grounding"] == [{"start_idx": 0, "end_idx": len(got["reasoning"]["text"]),
                                            "points": [(values[0], values[1]), (values[2], values[3])]}]
  assert isinstance(got["answer"], str)
