"""Train checkpoints (orbax) and a stage's exported params.

Layout of a stage's workdir:
    checkpoints/<step>/{state,meta}   the last `keep` checkpoints
    best/<step>/{state,meta}          the best one by `config.best_metric` (kept apart, never rotated out)
    checkpoints_corrupt/<step>/       checkpoints that failed to restore, moved aside for inspection
    export/{params,info.json}         the final trainable params of the stage

`state` is the train state pytree (step, trainable params, optimizer state, RNG key data); `meta` is
JSON: the data iterator position, the best metric so far, anything else the loop wants back.
Orbax writes each step into a temporary directory and renames it when complete, so a killed run
never leaves a half-written checkpoint under its final name. On restore the newest checkpoint is
tried first; one that cannot be read (truncated, checksum error, missing item) is reported with a
warning, moved aside, and the previous one is used. No silent fresh start: if none restores, that
is a CheckpointError.

Every process of a multi-process run must make the same calls (orbax synchronises them); only
process 0 moves directories and writes JSON side files.
"""
import json
import logging
import os
import shutil
import warnings

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from aajax.errors import CheckpointError
from aajax.train.mesh import to_host

CHECKPOINTS, BEST, CORRUPT, EXPORT = "checkpoints", "best", "checkpoints_corrupt", "export"


def _first_line(e: BaseException) -> str:
  text = str(e).strip().splitlines()
  return f"{type(e).__name__}: {text[0][:300] if text else ''}"


def abstract_like(tree):
  """ShapeDtypeStructs with the shardings of `tree`: the restore target (keeps optax NamedTuples)."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree)


def _barrier(name: str):
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


class Checkpointer:
  """The last `keep` checkpoints plus the best one of a workdir."""

  def __init__(self, workdir: str, keep: int = 3, async_save: bool = True):
    self.workdir = os.path.abspath(workdir)
    options = dict(create=True, enable_async_checkpointing=async_save)
    self._last = ocp.CheckpointManager(os.path.join(self.workdir, CHECKPOINTS),
                                       options=ocp.CheckpointManagerOptions(max_to_keep=max(int(keep), 1), **options))
    self._best = ocp.CheckpointManager(os.path.join(self.workdir, BEST),
                                       options=ocp.CheckpointManagerOptions(max_to_keep=1, **options))

  @staticmethod
  def _args(state, meta):
    return ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))

  def save(self, step: int, state, meta: dict) -> None:
    """Starts saving (asynchronously unless disabled); returns once device buffers are copied."""
    if step in self._last.all_steps():
      return
    self._best.wait_until_finished()   # one async save at a time: see save_best
    self._last.save(step, args=self._args(state, meta), force=True)

  def save_best(self, step: int, state, meta: dict) -> None:
    if step in self._best.all_steps():
      return
    # Each async save synchronises the processes with barriers from a background thread; with two
    # managers saving at once, the processes could enter those barriers in different orders and wait
    # for each other forever (seen in 2-process runs when the final and the best save coincide).
    self._last.wait_until_finished()
    self._best.save(step, args=self._args(state, meta), force=True)

  def steps(self) -> list[int]:
    return sorted(self._last.all_steps())

  def latest_step(self) -> int | None:
    return self._last.latest_step()

  def best_meta(self) -> dict | None:
    step = self._best.latest_step()
    if step is None:
      return None
    try:
      return self._best.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
    except Exception as e:  # noqa: BLE001 - a broken best checkpoint only loses the "best" record
      warnings.warn(f"cannot read the best checkpoint {self._best.directory}/{step}: {_first_line(e)}")
      return None

  def _restore(self, manager, step: int, target):
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_like(target)),
                                                              meta=ocp.args.JsonRestore()))
    return restored.state, dict(restored.meta or {})

  def restore_latest(self, target) -> tuple | None:
    """(state, meta) from the newest checkpoint that restores onto `target`'s structure and
    shardings, or None when there is no checkpoint at all."""
    steps = self.steps()
    if not steps:
      return None
    errors = []
    for step in reversed(steps):
      try:
        state, meta = self._restore(self._last, step, target)
      except Exception as e:  # noqa: BLE001 - any unreadable checkpoint: fall back to the previous one
        errors.append(f"step {step}: {_first_line(e)}")
        message = f"checkpoint {self._last.directory}/{step} cannot be restored ({_first_line(e)})"
        warnings.warn(message + ("; falling back to the previous one" if step != steps[0] else ""))
        logging.warning(message)
        continue
      if errors:
        self._move_aside([s for s in steps if s > step])
      return state, meta
    raise CheckpointError(
        f"no checkpoint in {self._last.directory} can be restored ({'; '.join(errors)}). If the model, the "
        f"trainable params or the optimizer changed since they were written, use a new workdir.")

  def _move_aside(self, steps: list[int]) -> None:
    """Unreadable steps leave the rotation (a new save of the same step must not collide with them)."""
    self.wait()
    if jax.process_index() == 0:
      corrupt = os.path.join(self.workdir, CORRUPT)
      os.makedirs(corrupt, exist_ok=True)
      for step in steps:
        src = os.path.join(self.workdir, CHECKPOINTS, str(step))
        if os.path.exists(src):
          dst = os.path.join(corrupt, str(step))
          while os.path.exists(dst):
            dst += "_"
          shutil.move(src, dst)
    _barrier("aajax_checkpoint_move_aside")
    self._last.reload()

  def wait(self) -> None:
    self._last.wait_until_finished()
    self._best.wait_until_finished()

  def close(self) -> None:
    self._last.close()
    self._best.close()


def export_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), EXPORT)


def export_params(workdir: str, params, info: dict | None = None) -> str:
  """Writes `params` (float32 on host) to <workdir>/export atomically; returns that directory."""
  final = export_dir(workdir)
  tmp = final + ".tmp"
  if jax.process_index() == 0:
    shutil.rmtree(tmp, ignore_errors=True)
  _barrier("aajax_export_start")
  host = to_host(params)
  with ocp.StandardCheckpointer() as ckpt:
    ckpt.save(os.path.join(tmp, "params"), host)
  if jax.process_index() == 0:
    with open(os.path.join(tmp, "info.json"), "w") as f:
      json.dump(info or {}, f, indent=2, sort_keys=True)
    old = final + ".old"
    shutil.rmtree(old, ignore_errors=True)
    if os.path.exists(final):
      os.rename(final, old)
    os.rename(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
  _barrier("aajax_export_done")
  return final


def load_exported(path: str) -> dict:
  """Params (numpy arrays) written by `export_params`; `path` is the export dir or the stage workdir."""
  path = os.path.abspath(path)
  if os.path.isdir(os.path.join(path, EXPORT)):
    path = os.path.join(path, EXPORT)
  params_dir = os.path.join(path, "params")
  if not os.path.isdir(params_dir):
    hint = "the run that writes them has not finished"
    if os.path.basename(path) == EXPORT:
      stage = os.path.basename(os.path.dirname(path))
      hint = f"stage {stage!r} has not finished; train it first (--stage={stage})"
    raise CheckpointError(f"no exported params at {path}: {hint}")
  try:
    with ocp.PyTreeCheckpointer() as ckpt:
      meta = ckpt.metadata(params_dir)
      tree = meta.item_metadata.tree if hasattr(meta, "item_metadata") else meta.tree
      restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
      return ckpt.restore(params_dir, args=ocp.args.PyTreeRestore(restore_args=restore_args))
  except Exception as e:  # noqa: BLE001
    raise CheckpointError(f"cannot read exported params {params_dir}: {_first_line(e)}") from None


def read_export_info(path: str) -> dict:
  path = os.path.abspath(path)
  if os.path.isdir(os.path.join(path, EXPORT)):
    path = os.path.join(path, EXPORT)
  try:
    with open(os.path.join(path, "info.json")) as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise CheckpointError(f"cannot read {path}/info.json: {e}") from None
