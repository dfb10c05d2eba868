"""The interface between a training task (model, loss, data) and the generic training loop.

A task never sees devices, meshes, checkpoints or signals; the loop never sees a model. The loop
creates a fresh Task for every stage and calls `init` before anything else, so a task may keep
stage-specific objects (the model, the stage config) on `self`.

Shapes and semantics:
  * `init` returns (frozen, trainable) param pytrees, deterministic given `rng`. Only `trainable` is
    differentiated, optimised and checkpointed; `frozen` is rebuilt by `init` on resume.
  * `loss_fn` is PER-DEVICE: it sees this device's slice of the batch and returns the mean loss over
    that slice plus a dict of scalar metrics. No collectives inside; the step averages gradients and
    metrics over the `data` mesh axis.
  * `train_data` yields dicts of numpy arrays. Either the full global batch (`config.batch_size`
    rows; each process keeps its own rows) or this process's share of it (batch_size /
    process_count rows) may be yielded. Its state must be JSON-serialisable and, in multi-process
    runs, identical on every process (process 0's state is what the checkpoint stores).
"""
from typing import Any, Protocol, runtime_checkable

import optax

PyTree = Any


@runtime_checkable
class DataIterator(Protocol):

  def __iter__(self): ...

  def __next__(self) -> dict: ...

  def get_state(self) -> dict:
    """A JSON-serialisable position (epoch, index, seed, ...)."""
    ...

  def set_state(self, state: dict) -> None: ...


@runtime_checkable
class Task(Protocol):
  stages: tuple[str, ...]

  def init(self, rng, config) -> tuple[PyTree, PyTree]:
    """(frozen_params, trainable_params) for the stage `config.stage`."""
    ...

  def loss_fn(self, trainable, frozen, batch, rng) -> tuple[Any, dict]:
    """(scalar loss, {name: scalar}) on this device's slice of the batch."""
    ...

  def train_data(self, config, start_state: dict | None) -> DataIterator: ...

  # Optional methods, looked up with getattr by the loop:
  #   optimizer(config) -> optax.GradientTransformation     (default: optim.from_config(config))
  #   evaluate(trainable, frozen, config, workdir) -> dict   (metrics; config.best_metric picks "best")
  #   export(trainable, frozen, config, workdir) -> None     (write a final usable model)


def optional(task, name: str):
  """The task's optional method `name`, or None."""
  fn = getattr(task, name, None)
  return fn if callable(fn) else None


def task_optimizer(task, config) -> optax.GradientTransformation:
  from aajax.train import optim
  make = optional(task, "optimizer")
  return make(config) if make is not None else optim.from_config(config)
