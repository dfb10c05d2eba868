"""The Moondream model as three towers over one params tree: {"vision", "text", "region"}.

Each tower is its own Flax module applied to its own sub-tree, so the jitted pieces (crop encoder,
projection, decoder prefill/decode, region heads) compile separately and a server can hold one
params tree and call them in any order. `MoondreamModules(cfg)` bundles the three modules;
`init_params` / `param_shapes` build or describe the params tree.
"""
import dataclasses

import jax
import jax.numpy as jnp

from aajax.decoder.model import TextDecoder
from aajax.region import RegionModel
from aajax.vlm.config import MoondreamConfig
from aajax.vlm.vision import VisionEncoder


@dataclasses.dataclass(frozen=True)
class MoondreamModules:
  cfg: MoondreamConfig

  @property
  def vision(self) -> VisionEncoder:
    return VisionEncoder(self.cfg.vision)

  @property
  def text(self) -> TextDecoder:
    return TextDecoder(self.cfg.text)

  @property
  def region(self) -> RegionModel:
    return RegionModel(self.cfg.region)


def _example_inputs(cfg: MoondreamConfig):
  v = cfg.vision
  return {"vision": jnp.zeros((1, v.crop_size, v.crop_size, v.in_channels), jnp.float32),
          "text": jnp.zeros((1, 2, cfg.text.dim), jnp.float32),
          "region": jnp.zeros((1, cfg.region.dim), jnp.float32)}


def init_params(cfg: MoondreamConfig, rng) -> dict:
  """Random float32 params of every tower (tests, random-init checkpoints)."""
  m, x = MoondreamModules(cfg), _example_inputs(cfg)
  keys = dict(zip(("vision", "text", "region"), jax.random.split(rng, 3)))
  touch_all = {"text": lambda mod, x: (mod(x)["hidden"], mod.logits(x))}  # __call__ skips the lm head
  return {name: getattr(m, name).init(keys[name], x[name], method=touch_all.get(name))["params"]
          for name in ("vision", "text", "region")}


def param_shapes(cfg: MoondreamConfig) -> dict:
  """{flax path tuple: shape} of every parameter, computed without allocating anything."""
  from aajax.params import flatten
  shapes = jax.eval_shape(lambda: init_params(cfg, jax.random.PRNGKey(0)))
  return {p: tuple(s.shape) for p, s in flatten(shapes).items()}
