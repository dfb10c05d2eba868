"""A trained AA-Moondream in use: the fast path (score, map, boxes) and the detailed path
(`detect` through the region heads, text explanations from the decoder conditioned on the result).

    rt = AAMoondreamRuntime.load("runs/aa_moondream")      # a workdir or a model directory
    rt.analyse(images)       -> [{"score", "map" (H x W in [0, 1]), "boxes", "tiling"}]   the anomaly head
    rt.explain(image)        -> {"score", "map", "boxes", "region_boxes", "text"}
    rt.explain(image, points=True)   adds "points" (the map's peak in each box) and "region_points"
                                     (Moondream's point loop, at most one per map region)
    rt.ask(images, question, context=True)   -> answers (greedy), conditioned on the anomaly result
    rt.detect(images, "defect")              -> boxes read through Moondream's region heads
    rt.point(images, "defect")               -> points read through Moondream's region heads

Images are uint8 RGB arrays or PIL images of any size (`to_rgb` converts the other modes).

Map crops. The head is trained on the whole image resized to one crop (the global crop). An image
larger than that (its margin-less size above one tile's window on both sides, Moondream's
`select_tiling` rule) also goes through Moondream's overlap tiling (`aajax.vlm.crops`): the head's
map of every local crop, stitched on the patch grid with `reconstruct_from_crops` (each cell from
one crop, overlaps dropped), is averaged with the global crop's map, both upsampled to the image.
The local crops show defects a few pixels wide over several patches, which the global crop's
resize blurs away; the global map is kept in the mean because local crops see the object magnified
beyond anything in training, so their map alone is less calibrated. The image score stays the
global crop's (the head's image logits are trained on whole objects, not parts). `crops="global"`
gives the single-crop result. A hybrid source (an AA model directory) has its own tower and crop
size: it is always single-crop.

Decoder crops. The decoder prefix is single-crop too ([global tokens | global tokens] projected,
`qa_model.encode_crops`): stage B trains the LoRA on exactly that prefix, and Moondream's
multi-crop prefix replaces the second half by the pooled local features, which the LoRA never saw.

The decoder runs with the LoRA merged into its weights (`aajax.nn.lora.merge`),
so it is Moondream's own jitted prefill/decode (`aajax.vlm.runtime.MoondreamFns`); `lora=False`
gives the base Moondream (what the diagnostic compares against).
"""
import numpy as np

from aajax.aa_moondream import exported, qa as qa_lib, qa_model, sources
from aajax.aa_moondream.model import AAMoondream
from aajax.eval import maps as maps_lib
from aajax.nn import lora as lora_lib
from aajax.vlm import moondream as md_api
from aajax.vlm import crops as crops_lib
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
  def analyse(self, images, crops: str = "auto") -> list[dict]:
    """crops "auto": the global crop, plus the local crops' maps for an image larger than a crop
    (module docstring); "global": the global crop only."""
    if crops not in ("auto", "global"):
      from aajax.errors import InputError
      raise InputError(f"crops must be 'auto' or 'global', got {crops!r}")
    images = [to_rgb(im) for im in _as_list(images)]
    if self.source is None:
      from aajax.errors import InputError
      raise InputError("this model has no anomaly head or source (export of a 'qa'-only run without one)")
    scores, maps = self.source(images)
    q = self.trained.qa
    out = []
    for im, s, m in zip(images, scores, maps):
      full = maps_lib.upsample(np.asarray(m, np.float32), im.shape[:2])
      tiled, tiling = self.tiled_map(im) if crops == "auto" else (None, (1, 1))
      if tiled is not None:
        full = 0.5 * (full + maps_lib.upsample(tiled, im.shape[:2]))
      full = np.clip(full, 0.0, 1.0)
      _, boxes = sources.context_of(s, full, q["map_threshold"], q["max_boxes"])
      out.append({"score": float(s), "map": full, "boxes": boxes, "grid_map": np.asarray(m), "tiling": tiling})
    return out

  def tiled_map(self, image: np.ndarray):
    """(stitched map of the local crops on the patch grid, (rows, cols)); (None, (1, 1)) when the image
    fits one crop or the source is not the head."""
    if not isinstance(self.source, sources.HeadSource):
      return None, (1, 1)
    v = self.cfg.moondream.vision
    tiles, tiling = crops_lib.overlap_crop_image(image, v)
    if tiling == (1, 1):
      return None, tiling
    _, maps = self.source.of_crops(crops_lib.normalize(tiles[1:]))
    return np.asarray(crops_lib.reconstruct_from_crops(maps[..., None], tiling, v.overlap_margin))[..., 0], tiling

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

  def point(self, images, obj: str = qa_lib.DETECT_OBJECT, max_objects: int = 10, encoded=None) -> list[list[dict]]:
    """Points {x, y} in [0, 1] from Moondream's point loop (region heads)."""
    found = md_api.point(self.fns, self.params, self.tokenizer, encoded or self.encode(images), obj, max_objects)
    return [f["points"] for f in found]

  def explain(self, image, max_tokens: int = 32, points: bool = False, crops: str = "auto") -> dict:
    """points: add "points", the map's peak inside each box (one per anomalous region, same order),
    and "region_points", Moondream's point loop on the defect word, at most as many as boxes."""
    result = self.analyse([image], crops)[0]
    enc = self.encode([image])   # one image prefix for every prompt (the calls copy the cache, never donate it)
    text = self.ask([image], qa_lib.QUESTIONS["explain"], True, max_tokens, [result], enc)[0]
    out = {"score": result["score"], "map": result["map"], "boxes": result["boxes"], "tiling": result["tiling"],
           "region_boxes": self.detect([image], encoded=enc)[0], "text": text}
    if points:
      out["points"] = [map_peak(result["map"], b) for b in result["boxes"]]
      n = len(result["boxes"])
      out["region_points"] = self.point([image], max_objects=n, encoded=enc)[0] if n else []
    return out

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


def map_peak(prob_map: np.ndarray, box) -> dict:
  """{x, y} in [0, 1]: the centre of the highest map pixel inside box (x_min, y_min, x_max, y_max)."""
  h, w = prob_map.shape
  x0, y0 = int(box[0] * w), int(box[1] * h)
  x1, y1 = max(x0 + 1, int(round(box[2] * w))), max(y0 + 1, int(round(box[3] * h)))
  y, x = np.unravel_index(np.argmax(prob_map[y0:y1, x0:x1]), (y1 - y0, x1 - x0))
  return {"x": (x0 + x + 0.5) / w, "y": (y0 + y + 0.5) / h}


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
