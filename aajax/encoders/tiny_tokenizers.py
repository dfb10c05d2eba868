"""Write small tokenizer files of both families from a corpus, so demos and tests need no download.

The files have the real formats and special-token layouts, only the vocabularies are small:
  siglip  `spiece.model`, a SentencePiece unigram model with <pad>=0, </s>=1, <unk>=2 as c4_en has;
  clip    `vocab.json` + `merges.txt`, byte-level BPE with `</w>` word ends: the 256 byte symbols, the
          same with `</w>`, the learned merges, then <|startoftext|> and <|endoftext|> last, as in
          OpenAI's vocabulary (so EOT is the largest id).
"""
import collections
import json
import os
import re

DEFAULT_CORPUS = (
    "a photo of a cat", "a photo of a dog", "a close-up photo of a scratched metal surface",
    "an image of a damaged bottle", "a flawless wooden texture", "a broken screw on a table",
    "a photo of a normal object", "a photo of an abnormal object with a defect",
    "a blurry photo of a red apple", "the grid pattern of a woven carpet",
)


def write_siglip_tokenizer(out_dir: str, corpus=DEFAULT_CORPUS, vocab_size: int = 64) -> str:
  import sentencepiece as spm
  os.makedirs(out_dir, exist_ok=True)
  prefix = os.path.join(out_dir, "spiece")
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(list(corpus) * 8), model_prefix=prefix, vocab_size=vocab_size,
      model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, hard_vocab_limit=False,
      minloglevel=2)
  os.remove(prefix + ".vocab")
  with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
    json.dump({"tokenizer_class": "SiglipTokenizer", "model_max_length": 64, "do_lower_case": True}, f)
  return out_dir


def bytes_to_unicode() -> dict[int, str]:
  """GPT-2/CLIP's reversible byte -> printable character map."""
  bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
  cs = bs[:]
  n = 0
  for b in range(256):
    if b not in bs:
      bs.append(b)
      cs.append(256 + n)
      n += 1
  return dict(zip(bs, map(chr, cs)))


def _learn_merges(corpus, num_merges: int) -> list[tuple[str, str]]:
  byte_map = bytes_to_unicode()
  words = collections.Counter()
  for text in corpus:
    for w in re.findall(r"[a-z]+|[0-9]|[^\sa-z0-9]+", text.lower()):
      sym = [byte_map[b] for b in w.encode("utf-8")]
      words[tuple(sym[:-1] + [sym[-1] + "</w>"])] += 1
  merges = []
  for _ in range(num_merges):
    pairs = collections.Counter()
    for w, n in words.items():
      for a, b in zip(w, w[1:]):
        pairs[(a, b)] += n
    if not pairs:
      break
    best = max(sorted(pairs), key=lambda p: pairs[p])
    merges.append(best)
    merged = collections.Counter()
    for w, n in words.items():
      out, i = [], 0
      while i < len(w):
        if i + 1 < len(w) and (w[i], w[i + 1]) == best:
          out.append(w[i] + w[i + 1])
          i += 2
        else:
          out.append(w[i])
          i += 1
      merged[tuple(out)] += n
    words = merged
  return merges


def write_clip_tokenizer(out_dir: str, corpus=DEFAULT_CORPUS, num_merges: int = 60) -> str:
  os.makedirs(out_dir, exist_ok=True)
  symbols = list(bytes_to_unicode().values())
  merges = _learn_merges(corpus, num_merges)
  vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
  vocab += ["<|startoftext|>", "<|endoftext|>"]
  with open(os.path.join(out_dir, "vocab.json"), "w") as f:
    json.dump({tok: i for i, tok in enumerate(vocab)}, f, ensure_ascii=False)
  with open(os.path.join(out_dir, "merges.txt"), "w") as f:
    f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
  with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
    json.dump({"tokenizer_class": "CLIPTokenizer", "model_max_length": 77}, f)
  return out_dir


def vocab_size_of(out_dir: str) -> int:
  if os.path.exists(os.path.join(out_dir, "vocab.json")):
    with open(os.path.join(out_dir, "vocab.json")) as f:
      return len(json.load(f))
  import sentencepiece as spm
  return spm.SentencePieceProcessor(model_file=os.path.join(out_dir, "spiece.model")).get_piece_size()

