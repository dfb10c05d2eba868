"""A tiny regression task for the training machinery, and its config (`get_config`).

The student is a frozen random projection followed by a trained tanh MLP; the targets come from a
fixed random teacher of the same shape, so the loss can fall close to zero. Two stages exercise
multi-stage runs: "first" trains the MLP; "second" loads the first stage's export, freezes its
hidden layer and trains only the head.

    python -m launch.train --config=aajax/train/toy.py --workdir=/tmp/toy
    python -m launch.train --config=aajax/train/toy.py:two_stage --workdir=/tmp/toy2
"""
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from aajax.errors import ConfigError
from aajax.train import checkpoint, tasks
from aajax.train.config import train_defaults


def _teacher(seed: int, dim: int, hidden: int):
  rng = np.random.default_rng([seed, 12345])
  return (rng.normal(size=(dim, hidden)).astype(np.float32) / np.sqrt(dim),
          rng.normal(size=(hidden, 1)).astype(np.float32) / np.sqrt(hidden))


EVAL_INDEX = 2**31 - 1   # the held-out batch: an index training never reaches


def make_batch(seed: int, index: int, rows: int, dim: int, hidden: int) -> dict:
  a, b = _teacher(seed, dim, hidden)
  x = np.random.default_rng([seed, index]).normal(size=(rows, dim)).astype(np.float32)
  return {"x": x, "y": np.tanh(x @ a) @ b}


class ToyData:
  """Deterministic batches: batch i is a function of (seed, i); the state is just i."""

  def __init__(self, seed: int, rows: int, dim: int, hidden: int, start_state: dict | None = None,
               delay: float = 0.0):
    self.seed, self.rows, self.dim, self.hidden, self.delay = seed, rows, dim, hidden, delay
    self.index = 0
    if start_state:
      self.set_state(start_state)

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    if self.delay:
      time.sleep(self.delay)
    batch = make_batch(self.seed, self.index, self.rows, self.dim, self.hidden)
    self.index += 1
    return batch

  def get_state(self) -> dict:
    return {"seed": self.seed, "index": self.index}

  def set_state(self, state: dict) -> None:
    if state.get("seed", self.seed) != self.seed:
      raise ConfigError(f"data state was written with seed {state['seed']}, this run uses {self.seed}")
    self.index = int(state["index"])


def apply(params: dict, x):
  h = jnp.tanh(x @ params["embed"])
  h = jnp.tanh(h @ params["hidden"]["kernel"] + params["hidden"]["bias"])
  return h @ params["head"]["kernel"] + params["head"]["bias"]


class ToyTask:
  stages = ("first", "second")

  def init(self, rng, config):
    dim, width = config.toy_dim, config.toy_width
    self.noise = float(config.toy_noise)
    k_embed, k_hidden, k_head = jax.random.split(rng, 3)
    params = {
        "embed": jax.random.normal(k_embed, (dim, width)) / np.sqrt(dim),
        "hidden": {"kernel": jax.random.normal(k_hidden, (width, width)) / np.sqrt(width), "bias": jnp.zeros(width)},
        "head": {"kernel": jax.random.normal(k_head, (width, 1)) / np.sqrt(width), "bias": jnp.zeros(1)},
    }
    if config.stage == "first":
      return {"embed": params["embed"]}, {"hidden": params["hidden"], "head": params["head"]}
    first = checkpoint.load_exported(config.exports.first)
    return {"embed": params["embed"], "hidden": first["hidden"]}, {"head": first["head"]}

  def loss_fn(self, trainable, frozen, batch, rng):
    pred = apply({**frozen, **trainable}, batch["x"])
    if self.noise:   # exercises the per-device rng
      pred = pred + self.noise * jax.random.normal(rng, pred.shape, pred.dtype)
    mse = jnp.mean((pred - batch["y"]) ** 2)
    return mse, {"mse": mse}

  def train_data(self, config, start_state):
    return ToyData(config.seed, config.batch_size, config.toy_dim, config.toy_width, start_state, config.toy_delay)

  def evaluate(self, trainable, frozen, config, workdir):
    from aajax.train.mesh import to_host
    batch = make_batch(config.seed, EVAL_INDEX, 64, config.toy_dim, config.toy_width)
    pred = apply(to_host({**frozen, **trainable}), batch["x"])
    return {"mse": float(np.mean((np.asarray(pred) - batch["y"]) ** 2))}


tasks.register("toy", ToyTask)


def get_config(arg=None):
  c = train_defaults()
  c.task = "toy"
  c.stages = ("first", "second") if arg == "two_stage" else ("first",)
  c.toy_dim = 8
  c.toy_width = 16
  c.toy_noise = 0.0          # std of noise added to predictions (uses the per-device rng)
  c.toy_delay = 0.0          # seconds per batch: a slow input pipeline, for interruption tests
  c.batch_size = 16
  c.steps = 60
  c.lr = 1e-2
  c.log_every = 20
  c.ckpt_every = 20
  c.best_metric = "mse"
  c.best_mode = "min"
  c.stage_second = ml_collections.ConfigDict({"lr": 3e-3, "steps": 30})
  return c
