"""Registry of training tasks by name (`config.task`).

Modules listed in `_BUILTIN_MODULES` register their tasks when imported; they are imported only when
a name is looked up and not yet known, so importing the registry stays cheap.
"""
import importlib
from typing import Callable

from aajax.errors import ConfigError

_BUILTIN_MODULES: tuple[str, ...] = ("aajax.train.toy", "aajax.anomaly.tasks", "aajax.captioning.tasks",
                                     "aajax.aa_moondream.tasks")

_FACTORIES: dict[str, Callable] = {}


def register(name: str, factory: Callable) -> None:
  """factory() -> a fresh Task. Registering a name again replaces it."""
  _FACTORIES[name] = factory


def _import_builtins():
  for module in _BUILTIN_MODULES:
    importlib.import_module(module)


def names() -> list[str]:
  _import_builtins()
  return sorted(_FACTORIES)


def get(name: str):
  """A fresh Task instance for `name`."""
  if name not in _FACTORIES:
    _import_builtins()
  if name not in _FACTORIES:
    raise ConfigError(f"unknown task {name!r}; known tasks: {', '.join(sorted(_FACTORIES)) or 'none'}")
  return _FACTORIES[name]()
