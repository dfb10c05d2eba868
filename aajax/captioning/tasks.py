"""Caption training as a task of the generic trainer: `config.task = "captioner"`.

`config.model.arch` picks the architecture:
  "prefix"  frozen ViT -> trainable projection -> decoder with LoRA (`prefix_vlm.py`). Trainable:
            {"projection", "lora"}, each with its own learning rate (`projection_lr`, `lora_lr`);
            frozen: {"vision", "decoder"}, which never enter the optimizer.
  "xattn"   the cross-attention baseline (`xattn.py`); everything trainable at `lr`.
The decoder is any family of `aajax.decoder.families` (`model.text.family`: phi, llama, qwen2, gpt2)
at the shapes of `model.text`, randomly initialised, or, with `model.decoder_dir`, a converted
decoder (`python -m weights_convert.decoder`): its config replaces `model.text` and its weights the
random decoder (prefix VLM only), and its tokenizer (`tokenizer.json` copied by the converter) encodes
the captions; a directory without one gets the captions' word tokenizer (its ids must fit the vocabulary).
Gradient accumulation (`accum`), bfloat16 compute (`dtype`), the mesh and checkpoints are the
trainer's. Evaluation on the held-out captions: loss, teacher-forced token accuracy, and greedy
generation (exact match, word accuracy), with a few samples written to <workdir>/eval/captions.jsonl.
The export is a model directory (kind "prefix_vlm", LoRA merged; or "xattn_captioner") with the
tokenizer, at <workdir>/model.
"""
import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from aajax.captioning import data as cap_data
from aajax.captioning.prefix_vlm import PrefixVLM, PrefixVLMConfig, shifted_cross_entropy
from aajax.captioning.xattn import XAttnCaptioner, greedy_cached
from aajax.encoders.config import ViTConfig
from aajax.decoder import families
from aajax.errors import CheckpointError, ConfigError
from aajax.nn import lora as lora_lib
from aajax.train import optim, tasks

ARCHS = ("prefix", "xattn")
EXPORTED_MODEL = "model"


def captioner_defaults(c):
  """Task fields of a captioner config (train fields come from `train_defaults()`)."""
  c.task = "captioner"
  c.model = ml_collections.ConfigDict(dict(
      arch="prefix",
      vision=dict(width=64, depth=2, heads=4, mlp_dim=256, patch=8, image_size=64),
      text=dict(family="phi", dim=64, ff_dim=256, n_layers=2, n_heads=4, n_kv_heads=4, rotary_dim=16,
                max_context=256, vocab_size=0),       # 0: the tokenizer's size (rounded up to a multiple of 8)
      decoder_dir="",                # a converted decoder (weights_convert.decoder): config + frozen weights
      projection="linear", causal_prefix=False, remat=False,
      lora=dict(rank=8, alpha=8.0, dropout=0.0, targets=(r"attn/(qkv|proj)$", r"mlp/fc[12]$"))))
  c.data = ml_collections.ConfigDict(dict(
      source="synthetic",        # "synthetic" | "pairs" (root + index / eval_index: JSONL or CSV)
      root="", index="", eval_index="",
      image_size=64, max_len=16, norm="siglip",
      n_per_class=32, classes=(), anomaly_fraction=0.5))
  c.eval = ml_collections.ConfigDict(dict(batch_size=32, max_new=14, samples=8))
  c.projection_lr = 1e-3
  c.lora_lr = 1e-3
  return c


def model_configs(model_cfg, vocab_size: int):
  """(ViTConfig, TextConfig) from the config section; the vocabulary comes from the tokenizer."""
  v, t = model_cfg.vision, model_cfg.text
  vision = ViTConfig("siglip", v.width, v.depth, v.heads, v.mlp_dim, v.patch, v.image_size, pool="none")
  vocab = -(-max(vocab_size, int(t.get("vocab_size", 0))) // 8) * 8
  optional = {k: t[k] for k in ("rope_theta", "ln_eps", "tie_embeddings") if k in t}
  text = families.text_config(t.get("family", "phi"), dim=t.dim, ff_dim=t.ff_dim, n_layers=t.n_layers,
                              vocab_size=vocab, max_context=t.max_context, n_heads=t.n_heads,
                              n_kv_heads=t.n_kv_heads, rotary_dim=t.rotary_dim, **optional)
  return vision, text


def converted_decoder(path: str, vocab_size: int):
  """(TextConfig, params) of a converted decoder directory, checked against the caption vocabulary."""
  from aajax.model_dir import load_model
  model, params = load_model(path, expect_kind="decoder")
  if vocab_size > model.cfg.vocab_size:
    raise ConfigError(f"the caption vocabulary ({vocab_size} words) exceeds the vocabulary of the decoder in "
                      f"{path} ({model.cfg.vocab_size})")
  return model.cfg, params


def caption_pairs(data_cfg, split: str, seed: int):
  if data_cfg.source == "synthetic":
    classes = tuple(data_cfg.classes) or None
    return cap_data.synthetic_captions(split, seed, data_cfg.image_size, classes, data_cfg.n_per_class,
                                       data_cfg.anomaly_fraction)
  if data_cfg.source == "pairs":
    index = data_cfg.index if split == "train" else (data_cfg.eval_index or data_cfg.index)
    return cap_data.read_pairs(data_cfg.root, index)
  raise ConfigError(f"unknown caption source {data_cfg.source!r}; expected 'synthetic' or 'pairs'")


def caption_tokenizer(decoder_dir: str, pairs):
  """The converted decoder's own tokenizer when its directory has one, else words of the captions."""
  if decoder_dir and os.path.exists(os.path.join(decoder_dir, "tokenizer.json")):
    return cap_data.LMTokenizer(decoder_dir)
  return cap_data.WordTokenizer.from_captions(p.caption for p in pairs)


def replaced(random_params, loaded, source: str):
  """The loaded tree in place of the random one, after checking they have the same paths and shapes."""
  want = jax.tree_util.tree_structure(random_params)
  if jax.tree_util.tree_structure(loaded) != want or any(
      a.shape != b.shape for a, b in zip(jax.tree.leaves(random_params), jax.tree.leaves(loaded))):
    raise CheckpointError(f"the decoder weights in {source} do not fit its config")
  return jax.tree.map(lambda a, b: jnp.asarray(b, a.dtype), random_params, loaded)


class CaptionerTask:
  stages = ("captions",)

  def init(self, rng, config):
    arch = config.model.arch
    if arch not in ARCHS:
      raise ConfigError(f"model.arch must be one of {ARCHS}, got {arch!r}")
    self.config, self.arch = config, arch
    self.pairs = caption_pairs(config.data, "train", config.seed)
    decoder_dir = config.model.get("decoder_dir", "")
    if decoder_dir and arch != "prefix":
      raise ConfigError("model.decoder_dir initialises the prefix VLM's frozen decoder; the cross-attention "
                        "baseline trains its own (use model.arch=prefix or drop decoder_dir)")
    self.tokenizer = caption_tokenizer(decoder_dir, self.pairs)
    vision, text = model_configs(config.model, len(self.tokenizer))
    if decoder_dir:
      text, decoder_params = converted_decoder(decoder_dir, len(self.tokenizer))
    if config.data.max_len + self._n_prefix(vision) > text.max_context:
      raise ConfigError(f"image tokens + max_len exceed model.text.max_context={text.max_context}")
    self._jitted = {}
    model_rng, lora_rng = jax.random.split(rng)
    if arch == "prefix":
      l = config.model.lora
      lora_cfg = lora_lib.LoraConfig(int(l.rank), float(l.alpha), float(l.dropout), tuple(l.targets))
      self.cfg = PrefixVLMConfig(vision, text, lora_cfg, config.model.projection, config.model.causal_prefix,
                                 config.model.remat)
      self.model = PrefixVLM(self.cfg)
      params = self.model.init(model_rng)
      if decoder_dir:
        params["decoder"] = replaced(params["decoder"], decoder_params, decoder_dir)
      lora = lora_lib.init_lora(lora_rng, params["decoder"], lora_cfg)
      return ({"vision": params["vision"], "decoder": params["decoder"]},
              {"projection": params["projection"], "lora": lora})
    self.cfg = (vision, text)
    self.model = XAttnCaptioner(vision, text, config.model.remat)
    images = jnp.zeros((1, vision.image_size, vision.image_size, 3), jnp.float32)
    return {}, self.model.init(model_rng, images, jnp.zeros((1, 2), jnp.int32))["params"]

  @staticmethod
  def _n_prefix(vision):
    return vision.grid ** 2

  # -- training --------------------------------------------------------------------------------
  def optimizer(self, config):
    if self.arch != "prefix":
      return optim.from_config(config)

    def with_lr(lr):
      c = ml_collections.ConfigDict(config.to_dict())
      c.lr = float(lr)
      return optim.from_config(c)
    return optax.multi_transform({"projection": with_lr(config.projection_lr), "lora": with_lr(config.lora_lr)},
                                 lambda params: {k: jax.tree.map(lambda _: k, v) for k, v in params.items()})

  def loss_and_accuracy(self, trainable, frozen, batch, rng=None):
    params = {**frozen, **trainable}
    if self.arch == "prefix":
      return self.model.loss(params, batch, rng)
    logits = self.model.apply({"params": params}, batch["images"], batch["tokens"])
    return shifted_cross_entropy(logits, batch["tokens"], batch["loss_mask"])

  def loss_fn(self, trainable, frozen, batch, rng):
    loss, accuracy = self.loss_and_accuracy(trainable, frozen, batch, rng)
    return loss, {"token_acc": accuracy}

  def train_data(self, config, start_state):
    return cap_data.CaptionBatches(self.pairs, self.tokenizer, config.batch_size, config.data.image_size,
                                   config.data.max_len, config.data.norm, config.seed, True, start_state)

  # -- evaluation ------------------------------------------------------------------------------
  def generate(self, trainable, frozen, images, max_new: int):
    params = {**frozen, **trainable}
    bos = self.tokenizer.bos_id
    if self.arch == "prefix":
      return self.model.generate(params, images, max_new, bos)
    return greedy_cached(self.model, params, images, max_new, bos)

  def _fn(self, name, fn, **static):
    if name not in self._jitted:
      self._jitted[name] = jax.jit(fn, static_argnames=tuple(static))
    return self._jitted[name]

  def evaluate(self, trainable, frozen, config, workdir=None):
    from aajax.train.mesh import to_host
    trainable, frozen = to_host(trainable), to_host(frozen)
    pairs = caption_pairs(config.data, "test", config.seed)
    batches = cap_data.CaptionBatches(pairs, self.tokenizer, min(config.eval.batch_size, len(pairs)),
                                      config.data.image_size, config.data.max_len, config.data.norm, shuffle=False)
    loss_acc = self._fn("loss", self.loss_and_accuracy)
    gen = self._fn("generate", self.generate, max_new=None)
    max_new = int(config.eval.max_new)
    totals, rows, exact, words_right, words_total, samples = np.zeros(2), 0, 0, 0, 0, []
    bs = batches.batch_size
    for start in range(0, len(pairs), bs):
      idx = np.arange(start, min(start + bs, len(pairs)))
      idx = np.concatenate([idx, np.full(bs - len(idx), idx[-1])])   # one compiled shape; extra rows ignored
      batch = batches.batch(idx)
      n = min(bs, len(pairs) - start)
      loss, acc = loss_acc(trainable, frozen, batch)
      totals += np.array([float(loss), float(acc)]) * n
      rows += n
      out = np.asarray(gen(trainable, frozen, batch["images"], max_new=max_new))
      for i in range(n):
        truth, said = pairs[idx[i]].caption.lower().split(), self.tokenizer.decode(out[i]).lower().split()
        exact += said == truth
        words_right += sum(a == b for a, b in zip(said, truth))
        words_total += len(truth)
        if len(samples) < int(config.eval.samples):
          samples.append({"truth": " ".join(truth), "generated": " ".join(said)})
    metrics = {"loss": totals[0] / rows, "token_acc": totals[1] / rows, "exact_match": exact / rows,
               "word_acc": words_right / max(words_total, 1)}
    if workdir and jax.process_index() == 0:
      os.makedirs(os.path.join(workdir, "eval"), exist_ok=True)
      with open(os.path.join(workdir, "eval", "captions.jsonl"), "w") as f:
        f.writelines(json.dumps(s) + "\n" for s in samples)
    return metrics

  # -- export ----------------------------------------------------------------------------------
  def export(self, trainable, frozen, config, workdir):
    if jax.process_index() != 0:
      return
    from aajax.model_dir import save_model
    from aajax.train.mesh import to_host
    params = to_host({**frozen, **trainable})
    if self.arch == "prefix":
      lora = params.pop("lora")
      params["decoder"] = lora_lib.merge(params["decoder"], lora, self.cfg.lora)
      kind, cfg = "prefix_vlm", dataclasses.asdict(self.cfg)
    else:
      kind, cfg = "xattn_captioner", {"vision": dataclasses.asdict(self.cfg[0]), "text": dataclasses.asdict(self.cfg[1])}
    tok = os.path.join(workdir, "tokenizer.json")
    with open(tok, "w") as f:
      json.dump(self.tokenizer.to_json(), f)
    save_model(os.path.join(workdir, EXPORTED_MODEL), kind, cfg, params, source="launch.train", overwrite=True,
               extra_files={"tokenizer.json": tok})


tasks.register("captioner", CaptionerTask)
