"""Embed images and texts with a converted SigLIP/CLIP model and print their similarities.

    python -m launch.embed --model DIR --images a.png b.jpg --texts "a cat" "a dog" [--dtype bfloat16]
    python -m launch.embed --demo [--workdir DIR]

`--demo` needs no download: it builds a small random SigLIP, writes it as an HF checkpoint
directory (safetensors + config.json + SentencePiece tokenizer), converts it with
`weights_convert.siglip`, and embeds scikit-image's sample photos. Its weights are random, so the
similarities are meaningless; the point is the whole path from a checkpoint to embeddings.

SigLIP scores are sigmoid(logit) per image-text pair; CLIP scores are a softmax over the texts.
"""
import argparse
import os
import sys
import tempfile

import numpy as np

from aajax.errors import AajaxError, InputError

DEMO_TEXTS = ("a photo of a cat", "a photo of an astronaut", "a cup of coffee")


def embed(model_dir: str, images, texts, dtype: str = "float32", image_size: int | None = None) -> dict:
  """{"image_embeds", "text_embeds" (unit vectors), "logits" [texts, images], "scores", "family"}."""
  import jax
  from aajax.encoders.preprocess import for_family
  from aajax.encoders.tokenizers import load_tokenizer
  from aajax.encoders.two_towers import TwoTowerModel, l2_normalize
  from aajax.model_dir import load_model
  if not images or not texts:
    raise InputError("give at least one image and one text")
  model, params = load_model(model_dir, expect_kind="two_tower", dtype=dtype)
  cfg = model.cfg
  pixels = for_family(cfg.family, image_size or cfg.vision.image_size)(list(images))
  ids = load_tokenizer(model_dir)(list(texts))

  @jax.jit
  def forward(params, pixels, ids):
    img = model.apply({"params": params}, pixels, method=TwoTowerModel.encode_image)["pooled"]
    txt = model.apply({"params": params}, ids, method=TwoTowerModel.encode_text)["pooled"]
    logits = model.apply({"params": params}, img, txt, method=TwoTowerModel.logits)
    return l2_normalize(img.astype("float32")), l2_normalize(txt.astype("float32")), logits

  img, txt, logits = (np.asarray(a) for a in forward(params, pixels, ids))
  if cfg.family == "siglip":
    scores = 1 / (1 + np.exp(-logits))
  else:
    e = np.exp(logits - logits.max(axis=0, keepdims=True))
    scores = e / e.sum(axis=0, keepdims=True)
  return {"image_embeds": img, "text_embeds": txt, "logits": logits, "scores": scores, "family": cfg.family}


def print_table(result: dict, image_names, texts):
  what = "sigmoid(logit)" if result["family"] == "siglip" else "softmax over texts"
  names = [os.path.basename(str(n))[:14] for n in image_names]
  cosine = result["text_embeds"] @ result["image_embeds"].T
  for title, table in ((f"scores ({what})", result["scores"]), ("cosine similarity", cosine)):
    print(f"{title}; rows: texts, columns: images")
    print(" " * 32 + "".join(f"{n:>16}" for n in names))
    for text, row in zip(texts, table):
      print(f"{text[:30]:<32}" + "".join(f"{v:>16.4f}" for v in row))


def build_demo_checkpoint(workdir: str, seed: int = 0) -> str:
  """A random small SigLIP written as an HF checkpoint directory, with its tokenizer."""
  import jax
  from aajax.encoders.config import siglip
  from aajax.encoders.tiny_tokenizers import vocab_size_of, write_siglip_tokenizer
  from aajax.encoders.two_towers import TwoTowerModel
  from weights_convert.export_hf import save_hf_two_tower
  hf_dir = os.path.join(workdir, "hf_siglip")
  write_siglip_tokenizer(hf_dir)
  cfg = siglip(128, 2, 4, 256, 16, 64, text_len=16, vocab=vocab_size_of(hf_dir))
  model = TwoTowerModel(cfg)
  s = cfg.vision.image_size
  params = jax.jit(model.init)(jax.random.PRNGKey(seed), np.zeros((1, s, s, 3), np.float32),
                               np.zeros((1, cfg.text.max_len), np.int32))["params"]
  return save_hf_two_tower(cfg, jax.tree.map(np.asarray, params), hf_dir)


def demo_images(workdir: str) -> list[str]:
  from PIL import Image
  from skimage import data
  paths = []
  for name in ("chelsea", "astronaut", "coffee"):
    path = os.path.join(workdir, f"{name}.png")
    Image.fromarray(getattr(data, name)()).save(path)
    paths.append(path)
  return paths


def run_demo(workdir: str | None) -> int:
  from weights_convert.towers import convert
  workdir = workdir or tempfile.mkdtemp(prefix="aajax-embed-demo-")
  os.makedirs(workdir, exist_ok=True)
  hf_dir = build_demo_checkpoint(workdir)
  print(f"wrote a random SigLIP in HF layout: {hf_dir}")
  model_dir = os.path.join(workdir, "model")
  convert("siglip", hf_dir, model_dir, overwrite=True)
  print(f"converted it with weights_convert.siglip: {model_dir}")
  images = demo_images(workdir)
  result = embed(model_dir, images, DEMO_TEXTS)
  print_table(result, images, DEMO_TEXTS)
  print("(random weights: the scores only show that the pipeline runs end to end)")
  return 0


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(prog="python -m launch.embed", description=__doc__.split("\n")[0])
  ap.add_argument("--model", help="converted model directory (weights_convert.siglip / .clip)")
  ap.add_argument("--images", nargs="*", default=[])
  ap.add_argument("--texts", nargs="*", default=[])
  ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="compute dtype")
  ap.add_argument("--image_size", type=int, default=None, help="input resolution (default: the model's)")
  ap.add_argument("--demo", action="store_true", help="build, convert and embed a random SigLIP")
  ap.add_argument("--workdir", default=None, help="where --demo writes its files (default: a temp dir)")
  args = ap.parse_args(argv)
  try:
    if args.demo:
      return run_demo(args.workdir)
    if not args.model:
      ap.error("give --model DIR (or --demo)")
    result = embed(args.model, args.images, args.texts, args.dtype, args.image_size)
    print_table(result, args.images, args.texts)
    return 0
  except AajaxError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
