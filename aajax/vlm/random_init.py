"""Random Moondream params drawn with numpy from the shapes alone, for demos, tests and benchmarks
(running the Flax initialisers op by op is far slower on a CPU)."""
import numpy as np

from aajax.params import unflatten
from aajax.vlm.config import MoondreamConfig
from aajax.vlm.model import param_shapes


def random_params(cfg: MoondreamConfig, seed: int = 0, dtype=np.float32) -> dict:
  """Every parameter random (biases, LayerNorm affine and tau included) at activation-preserving scales."""
  rng = np.random.default_rng(seed)
  flat = {}
  for path, shape in sorted(param_shapes(cfg).items()):
    name = path[-1]
    if name == "scale":
      v = 1.0 + 0.1 * rng.standard_normal(shape)
    elif name == "bias":
      v = 0.05 * rng.standard_normal(shape)
    elif name in ("coord_features", "size_features"):
      v = 3.0 * rng.standard_normal(shape)
    elif name == "alpha":
      v = rng.standard_normal(shape)
    elif name in ("wte", "pos_emb"):
      v = 0.5 * rng.standard_normal(shape)
    else:  # kernels [.., in, out], tau [qkv, heads], experts [E, in, out]
      v = rng.standard_normal(shape) * shape[-2] ** -0.5
    flat[path] = v.astype(dtype)
  return unflatten(flat)
