"""AA-Moondream against a small torch reference: the adapted tower, head, stage-A loss and QA loss.

The reference drives Moondream's vision blocks and decoder from `tests.moondream.torch_reference`
(checkpoint names) and AA-CLIP's adapter and losses from `tests.anomaly.torch_reference`, with the
same random weights.
"""
import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F

from aajax.aa_moondream import objectives, qa as qa_lib, qa_model
from aajax.aa_moondream.model import AAMoondream
from tests.aa_moondream.helpers import tiny_params
from tests.anomaly import torch_reference as aa_ref
from tests.moondream import torch_reference as md_ref
from weights_convert.moondream import params_to_state

HIGHEST = jax.default_matmul_precision("highest")


def t(x):
  """A float32 torch tensor; torch tensors pass through (trainable head params keep their graph)."""
  return x if isinstance(x, torch.Tensor) else torch.tensor(np.asarray(x, np.float32))


def vision_block(state, vc, i, x):
  n = f"vision.blocks.{i}"
  h = md_ref.layer_norm(state, f"{n}.ln1", x)
  b, q, d = h.shape
  qkv = [u.view(b, q, vc.enc_n_heads, d // vc.enc_n_heads).transpose(1, 2)
         for u in md_ref.linear(state, f"{n}.attn.qkv", h).chunk(3, dim=-1)]
  a = F.scaled_dot_product_attention(*qkv).transpose(1, 2).reshape(b, q, d)
  x = x + md_ref.linear(state, f"{n}.attn.proj", a)
  return x + md_ref.mlp(state, f"{n}.mlp", md_ref.layer_norm(state, f"{n}.ln2", x))


def torch_head(cfg, state, head, crops_nhwc):
  """AA-CLIP's image path on Moondream's tower, written the released way (adapter = Linear + LeakyReLU,
  norm-matched, lambda blend), then the learned anchors and level fusion."""
  vc = cfg.moondream.vision
  x = t(crops_nhwc).permute(0, 3, 1, 2)
  x = md_ref.linear(state, "vision.patch_emb", md_ref.create_patches(x, vc.enc_patch_size)) + md_ref.T(state, "vision.pos_emb")
  taps = {}
  for i in range(vc.enc_n_layers):
    x = vision_block(state, vc, i, x)
    if i < cfg.image_adapt_until:
      a = F.leaky_relu(x @ t(head[f"image_adapters_{i}"]["fc"]["kernel"]))
      a = a * x.norm(dim=-1, keepdim=True) / a.norm(dim=-1, keepdim=True)
      x = cfg.image_adapt_weight * a + (1 - cfg.image_adapt_weight) * x
    if i + 1 in cfg.levels:
      taps[i + 1] = md_ref.layer_norm(state, "vision.post_ln", x)
  seg = [F.normalize(taps[lv] @ t(head[f"seg_proj_{k}"]["fc"]["kernel"]), dim=-1) for k, lv in enumerate(cfg.levels)]
  det = F.normalize(taps[cfg.levels[-1]] @ t(head["det_proj"]["fc"]["kernel"]), dim=-1).mean(1)
  anchors = F.normalize(t(head["anchors"]), dim=0)
  levels = [cfg.score_scale * s @ anchors for s in seg]
  w = torch.softmax(t(head["level_weights"]), 0)
  fused = sum(w[k] * lg for k, lg in enumerate(levels))
  diff = (fused[..., 1] - fused[..., 0]) / cfg.score_scale
  k = max(1, round(cfg.topk_fraction * diff.shape[1]))
  peak = diff.topk(k, dim=1).values.mean(1)
  evidence = torch.stack([torch.zeros_like(peak), t(head["map_weight"]) * peak], -1)
  return levels, fused, cfg.det_scale * (det @ anchors + evidence)


def probabilities(logits, size):
  """[B, N, 2] patch logits -> softmax of the bilinear (align_corners) upsampling, [B, 2, S, S]."""
  b, n, c = logits.shape
  g = int(np.sqrt(n))
  up = F.interpolate(logits.permute(0, 2, 1).reshape(b, c, g, g), size=size, mode="bilinear", align_corners=True)
  return torch.softmax(up, dim=1)


def torch_stage_a_loss(cfg, state, head, batch):
  """(loss, seg, fused, det) of AA-CLIP's stage-2 family on the torch head (`objectives.anomaly_loss`)."""
  levels, fused, image = torch_head(cfg, state, head, batch["images"])
  size, mask = cfg.image_size, t(batch["masks"])
  seg = sum(aa_ref.seg_loss(probabilities(lg, size), mask) for lg in levels)
  fused_loss = aa_ref.seg_loss(probabilities(fused, size), mask)
  det = F.cross_entropy(image, torch.tensor(batch["labels"]).long())
  return seg + fused_loss + det, seg, fused_loss, det


def batch(cfg, seed=0):
  rng = np.random.default_rng(seed)
  s = cfg.image_size
  masks = np.zeros((2, s, s), np.float32)
  masks[1, 4:12, 20:30] = 1
  return {"images": rng.uniform(-1, 1, (2, s, s, 3)).astype(np.float32), "masks": masks,
          "labels": np.array([0, 1], np.int32)}


def test_head_forward_stage_a_loss_and_gradients_match_torch():
  """Also the head's gradients through the frozen tower (what the stage-A step and its benchmark run)."""
  cfg, md, head = tiny_params()
  state = params_to_state(md, cfg.moondream)
  b = batch(cfg)
  params = {**head, "vision": md["vision"]}
  model = AAMoondream(cfg)
  with HIGHEST:
    out = jax.jit(model.apply)({"params": params}, b["images"])   # one compile each, not op by op
    (loss, metrics), grads = jax.jit(jax.value_and_grad(
        lambda h, v, b: objectives.anomaly_loss(model, {**h, "vision": v}, b), has_aux=True))(head, md["vision"], b)
  levels, fused, image = torch_head(cfg, state, head, b["images"])
  for got, want in zip(out["level_logits"], levels):
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-3)   # logits are scaled by 100
  np.testing.assert_allclose(out["fused_logits"], fused.numpy(), rtol=1e-4, atol=1e-3)
  np.testing.assert_allclose(out["image_logits"], image.numpy(), rtol=1e-4, atol=1e-4)

  total, seg, fused_loss, det = torch_stage_a_loss(cfg, state, head, b)
  np.testing.assert_allclose(metrics["seg_loss"], seg.item(), rtol=1e-4)
  np.testing.assert_allclose(metrics["fused_seg_loss"], fused_loss.item(), rtol=1e-4)
  np.testing.assert_allclose(metrics["det_loss"], det.item(), rtol=1e-4)
  np.testing.assert_allclose(loss, total.item(), rtol=1e-4)
  g = cfg.grid
  assert g * g == out["fused_logits"].shape[1]

  leaves, tree = jax.tree.flatten(head)
  trainable = [torch.tensor(np.asarray(x, np.float32), requires_grad=True) for x in leaves]
  torch_stage_a_loss(cfg, state, jax.tree.unflatten(tree, trainable), b)[0].backward()
  for got, want in zip(jax.tree.leaves(grads), trainable):
    np.testing.assert_allclose(got, want.grad.numpy(), rtol=2e-3, atol=2e-5)


def test_probabilities_are_in_unit_range():
  cfg, md, head = tiny_params()
  pix, score = AAMoondream(cfg).apply({"params": {**head, "vision": md["vision"]}}, batch(cfg)["images"],
                                      method=AAMoondream.probabilities)
  assert pix.shape == (2, cfg.grid, cfg.grid) and score.shape == (2,)
  assert float(pix.min()) >= 0 and float(pix.max()) <= 1 and float(score.min()) >= 0 and float(score.max()) <= 1


class FakeTokenizer:
  """Query / detect layouts of the tiny templates with words as fixed ids (no tokenizer file)."""

  def __init__(self, cfg):
    from aajax.vlm.tokenizer import MoondreamTokenizer
    self.md = MoondreamTokenizer(None, cfg.moondream.tokenizer)
    self.cfg = cfg.moondream.tokenizer
    self.md.encode = self.encode

  def encode(self, text):
    return [30 + (sum(map(ord, w)) % 200) for w in text.split()]

  def query_prompt(self, q):
    return self.md.query_prompt(q)

  def object_prompt(self, task, obj):
    return self.md.object_prompt(task, obj)


def test_qa_sequence_loss_matches_torch():
  """Teacher-forced tokens, coordinate and size bins through the decoder with LoRA, one text item
  with an anomaly context and one detect item with two boxes."""
  from aajax.nn import lora
  cfg, md, _ = tiny_params()
  mc = cfg.moondream
  tok = FakeTokenizer(cfg)
  bins = qa_lib.Bins.of(mc.region)
  mask = np.zeros((20, 20), np.uint8)
  mask[12:16, 12:18] = 1   # two regions: two boxes
  mask[4:10, 2:8] = 1
  boxes = qa_lib.boxes_from_mask(mask)
  assert len(boxes) == 2
  items = [qa_lib.build_item(tok, "explain", 1, "scratch", mask, bins, context=(0.8, boxes[:1])),
           qa_lib.build_item(tok, "detect", 1, "stain", mask, bins)]
  seq = qa_lib.pad_sequences(items, 24)
  crops = batch(cfg)["images"]
  ab = lora.init_lora(jax.random.PRNGKey(1), md["text"], cfg.lora)
  ab = jax.tree.map(lambda x: x + 0.1, ab)
  with HIGHEST:
    loss, metrics = qa_model.sequence_losses(mc, md, jnp.asarray(crops), {k: jnp.asarray(v) for k, v in seq.items()},
                                             ab, cfg.lora)
  merged = {**md, "text": jax.tree.map(np.asarray, lora.merge(md["text"], ab, cfg.lora))}
  state = params_to_state(merged, mc)
  # torch: image prefix (single crop: project [tokens | tokens]), elements, decoder, heads
  x = t(crops).permute(0, 3, 1, 2)
  enc = md_ref.vision_encoder(state, mc.vision, x)
  image = md_ref.mlp(state, "vision.proj_mlp", torch.cat([enc, enc], -1))
  bos = md_ref.embed(state, torch.full((2, 1), mc.tokenizer.bos_id))
  tok_emb = md_ref.embed(state, torch.tensor(seq["token"]).long())
  coord = md_ref.encode_coordinate(state, t(seq["value"][..., :1]))
  size = md_ref.encode_size(state, t(seq["value"]))
  kind = torch.tensor(seq["kind"])[..., None]
  el = torch.where(kind == qa_lib.TOKEN, tok_emb, torch.where(kind == qa_lib.COORD, coord, size))
  hidden = md_ref.text_hidden(state, mc.text, torch.cat([bos, image, el], 1), prefix=mc.prefix_len)[:, mc.prefix_len:]
  logits = md_ref.text_logits(state, hidden)
  mlp_heads = mc.region.inner_dim is not None
  coord_logits = md_ref.decode_head(state, "coord_decoder", hidden, mlp_heads)
  size_logits = md_ref.decode_head(state, "size_decoder", hidden, mlp_heads).view(2, -1, 2, mc.region.size_out_dim // 2)

  def ce(lg, target):
    target = torch.tensor(target).long()
    keep = target != qa_lib.NO_TARGET
    return F.cross_entropy(lg[keep], target[keep], reduction="sum"), int(keep.sum())

  tok_sum, n_tok = ce(logits, seq["t_token"])
  c_sum, n_c = ce(coord_logits, seq["t_coord"])
  s_sum, n_s = ce(size_logits, seq["t_size"])
  want = tok_sum / n_tok + (c_sum + s_sum) / (n_c + n_s)
  assert n_c == 4 and n_s == 4   # two boxes: x and y bins, w and h bins
  np.testing.assert_allclose(metrics["token_loss"], (tok_sum / n_tok).item(), rtol=1e-4)
  np.testing.assert_allclose(loss, want.item(), rtol=1e-4)

