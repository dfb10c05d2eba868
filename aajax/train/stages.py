"""Multi-stage runs: one config, several stages trained one after another.

    config.stages = ("text", "image")          # order; () = all of the task's stages
    config.lr = 1e-3                           # shared fields ...
    config.stage_image = ConfigDict({"lr": 5e-4, "steps": 2000})   # ... overridden per stage

Stage <name> trains in <workdir>/<name>/ with the shared fields updated by `stage_<name>`, plus
`config.stage = name` and `config.exports.<earlier stage> = its export directory`, so a later stage's
`Task.init` can `checkpoint.load_exported(config.exports.text)`. A finished stage is skipped when the
run is started again; an interrupted one resumes. `only=` runs a single stage (its earlier stages
must have been exported already).
"""
import os

import ml_collections

from aajax.errors import ConfigError
from aajax.train import checkpoint, loop, tasks
from aajax.train.config import STAGE_PREFIX, with_defaults


def stage_names(config, task) -> tuple[str, ...]:
  names = tuple(config.get("stages", ()) or ()) or tuple(task.stages)
  unknown = [n for n in names if n not in task.stages]
  if unknown:
    raise ConfigError(f"unknown stage {unknown[0]!r} for task {config.task!r}; its stages: {', '.join(task.stages)}")
  return names


def stage_config(config, name: str, exports: dict | None = None) -> ml_collections.ConfigDict:
  """The shared fields with `stage_<name>` merged over them, `stage` and `exports` set."""
  shared = {k: v for k, v in config.to_dict().items() if not k.startswith(STAGE_PREFIX) and k != "stages"}
  out = ml_collections.ConfigDict(shared)
  section = config.get(STAGE_PREFIX + name)
  if section is not None:
    _merge_into(out, section.to_dict())
  out.stage = name
  out.exports = ml_collections.ConfigDict(dict(exports or {}))
  return with_defaults(out)


def _merge_into(out: ml_collections.ConfigDict, section: dict) -> None:
  """Deep merge: a nested section (`stage_image.model.remat`) changes only the fields it names."""
  for key, value in section.items():
    if isinstance(value, dict) and isinstance(out.get(key), ml_collections.ConfigDict):
      _merge_into(out[key], value)
    else:
      with out.ignore_type():
        out[key] = value


def run(config, workdir: str, only: str | None = None, mesh=None) -> dict:
  """Trains the stages of `config` in order; {stage: TrainResult} of the stages run this time."""
  config = with_defaults(config)
  if not config.task:
    raise ConfigError("config.task is empty: name a registered task (aajax.train.tasks)")
  names = stage_names(config, tasks.get(config.task))
  if only is not None and only not in names:
    raise ConfigError(f"--stage={only} is not one of this run's stages: {', '.join(names)}")
  workdir = os.path.abspath(workdir)
  exports, results = {}, {}
  for name in names:
    stage_dir = os.path.join(workdir, name)
    if only is None or name == only:
      result = loop.train(tasks.get(config.task), stage_config(config, name, exports), stage_dir, mesh=mesh)
      results[name] = result
      if result.interrupted:
        break
    exports[name] = checkpoint.export_dir(stage_dir)
  return results
