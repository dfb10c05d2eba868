"""A trained AA-Moondream in use: the fast path (score, map, boxes) and the detailed path
(`detect` through the region heads, text explanations from the decoder conditioned on the result).

    rt = AAMoondreamRuntime.load("runs/aa_moondream")      # a workdir or a model directory
    rt.analyse(images)       -> [{"score", "map" (H x W in [0, 1]), "boxes"}]       the anomaly head
    rt.explain(image)        -> {"score", "map", "boxes", "region_boxes", "text"}
    rt.ask(images, question, context=True)   -> answers (greedy), conditioned on the anomaly result
    rt.detect(images, "defect")              -> boxes read through Moondream's region heads

Images are uint8 RGB arrays or PIL images of any size; both branches see them as one crop at the
tower's crop size. The decoder runs with the LoRA merged into its weights (`aajax.nn.lora.merge`),
so it is Moondream's own jitted prefill/decode (`aajax.vlm.runtime.MoondreamFns`); `lora=False`
gives the base Moondream (what the diagnostic compares against).
"""
import numpy as np

from aajax.aa_moondream import exported, qa as qa_lib, qa_model, sources
from aajax.aa_moondream.model import AAMoondream
from aajax.eval import maps as maps_lib
from aajax.nn import lora as lora_lib
from aajax.vlm import moondream as md_api
from aajax.vlm.crops import to_rgb
from aajax.vlm.runtime import MoondreamFns


class AAMoondreamRuntime:
  def __init__(self, trained: exported.TrainedAAMoondream, lora: bool = True):
    self.trained, cfg = trained, trained.cfg
    self.cfg, self.tokenizer = cfg, trained.tokenizer
    self.fns = MoondreamFns(cfg.moondream)
    self.model = AAMoondream(cfg)
    base = trained.moondream
    self.has_lora = lora and trained.lora is not None
    text = lora_lib.merge(base["text"], trained.lora, cfg.lora) if self.has_lora else base["text"]
    self.params = {**base, "text": text}
    self.head_params = None if trained.head is None else {**trained.head, "vision": base["vision"]}
    kind = trained.source.get("kind")
    usable = kind == "aa" or (kind == "head" and self.head_params is not None)
    self.source = sources.make_source(trained.source, self.model, self.head_params) if usable else None

  @classmethod
  def load(cls, path: str, lora: bool = True) -> "AAMoondreamRuntime":
    return cls(exported.load_model(path), lora)

  def base(self) -> "AAMoondreamRuntime":
    """The same model without its LoRA (base Moondream's decoder)."""
    return AAMoondreamRuntime(self.trained, lora=False)

  # -- fast path -------------------------------------------------------------------------------
  def analyse(self, images) -> list[dict]:
    images = [to_rgb(im) for im in _as_list(images)]
    if self.source is None:
      from aajax.errors import InputError
      raise InputError("this model has no anomaly head or source (export of a 'qa'-only run without one)")
    scores, maps = self.source(images)
    q = self.trained.qa
    out = []
    for im, s, m in zip(images, scores, maps):
      full = np.clip(maps_lib.upsample(np.asarray(m, np.float32), im.shape[:2]), 0.0, 1.0)
      _, boxes = sources.context_of(s, full, q["map_threshold"], q["max_boxes"])
      out.append({"score": float(s), "map": full, "boxes": boxes, "grid_map": np.asarray(m)})
    return out

  # -- detailed path ---------------------------------------------------------------------------
  def encode(self, images):
    crops = sources.crops_of([to_rgb(im) for im in _as_list(images)], self.cfg.image_size)
    return qa_model.encode_crops(self.fns, self.params, crops)

  def ask(self, images, question: str, context: bool = True, max_tokens: int = 32, results=None,
          encoded=None) -> list[str]:
    """Greedy answers to `question` about each image, after the anomaly context when `context`
    (`results`: `analyse` of these images, `encoded`: their `encode`, when already computed)."""
    images = _as_list(images)
    if context and results is None:
      results = self.analyse(images)
    items = []
    for i in range(len(images)):
      seq = qa_lib.Sequence()
      if context:
        qa_lib.add_context(seq, results[i]["score"], results[i]["boxes"])
      seq.tokens(self.tokenizer.query_prompt(question))
      items.append(seq)
    ids = qa_model.generate_greedy(self.fns, self.params, encoded or self.encode(images), items, max_tokens)
    return [self.tokenizer.decode(t) for t in ids]

  def detect(self, images, obj: str = qa_lib.DETECT_OBJECT, max_objects: int = 10, encoded=None) -> list[list[dict]]:
    """Boxes {x_min, y_min, x_max, y_max} in [0, 1] from Moondream's detect loop (region heads)."""
    found = md_api.detect(self.fns, self.params, self.tokenizer, encoded or self.encode(images), obj, max_objects)
    return [f["objects"] for f in found]

  def explain(self, image, max_tokens: int = 32) -> dict:
    result = self.analyse([image])[0]
    enc = self.encode([image])   # one image prefix for both prompts (the calls copy the cache, never donate it)
    text = self.ask([image], qa_lib.QUESTIONS["explain"], True, max_tokens, [result], enc)[0]
    return {"score": result["score"], "map": result["map"], "boxes": result["boxes"],
            "region_boxes": self.detect([image], encoded=enc)[0], "text": text}

  def layer_embeddings(self, images, adapted: bool = True) -> np.ndarray:
    """[depth, B, D] mean tokens of every vision block (adapters applied when `adapted`)."""
    crops = sources.crops_of([to_rgb(im) for im in _as_list(images)], self.cfg.image_size)
    adapted = adapted and self.head_params is not None
    if adapted:
      params = self.head_params
    else:   # the head's setup declares these; the unadapted forward never reads them
      params = {"vision": self.params["vision"], "anchors": np.zeros((self.cfg.embed_dim, 2), np.float32),
                "level_weights": np.zeros((len(self.cfg.levels),), np.float32), "map_weight": np.float32(1)}
    return np.asarray(_layer_fn(self.model, adapted)(params, crops))


_LAYER_FNS = {}


def _layer_fn(model, adapted: bool):
  import jax
  key = (model, adapted)
  if key not in _LAYER_FNS:
    _LAYER_FNS[key] = jax.jit(lambda p, x: model.apply({"params": p}, x, adapted,
                                                       method=AAMoondream.layer_embeddings))
  return _LAYER_FNS[key]


def _as_list(images):
  return list(images) if isinstance(images, (list, tuple)) else [images]
