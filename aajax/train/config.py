"""Train configs: defaults, `--config=path.py:arg` files and `--config.key=value` overrides.

A config file defines `get_config(arg=None)` returning an `ml_collections.ConfigDict`, normally
built on `train_defaults()` (big_vision style): `--config=configs/aa_siglip.py:so400m,data=visa`
calls `get_config("so400m,data=visa")`. Overrides name existing keys only, so a typo is an error
naming the key instead of a silently ignored setting. Values are parsed to the type of the field
they replace (bool, int, float, str, tuple via Python literal or comma list).
"""
import ast
import difflib
import importlib.util
import inspect
import os

import ml_collections

from aajax.errors import ConfigError

STAGE_PREFIX = "stage_"


def train_defaults() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.task = ""                 # registered task name (aajax.train.tasks)
  c.stages = ()               # stages to run in order; () = all of the task's stages
  c.seed = 0
  c.batch_size = 8            # GLOBAL batch, split over all devices of all processes
  c.steps = 100
  c.accum = 1                 # micro-batches per device per step (gradient accumulation)
  c.dtype = "float32"         # compute dtype; "bfloat16" keeps float32 master params and optimizer state
  # mesh and parameter sharding (aajax.train.mesh, aajax.train.sharding)
  c.mesh = "data:-1"          # axis sizes: "data:2,fsdp:4", "data:-1,expert:4"; -1 = the devices left
  c.fsdp_min_size = 2 ** 14   # leaves with fewer elements stay replicated on the fsdp axis
  c.expert_params = r"mlp/fc[12]$"   # regex: [experts, ...] weights split over the expert axis
  # optimizer (aajax.train.optim)
  c.optimizer = "adam"        # adam | adamw | sgd
  c.lr = 1e-3
  c.b1 = 0.9
  c.b2 = 0.999
  c.eps = 1e-8
  c.weight_decay = 0.0        # adamw only
  c.momentum = 0.0            # sgd only
  c.grad_clip = 0.0           # global-norm clip; 0 = off
  c.schedule = "constant"     # constant | multistep | cosine | warmup_cosine
  c.warmup_steps = 0
  c.milestones = ()           # multistep: update indices where lr *= gamma
  c.gamma = 0.1
  c.min_lr_ratio = 0.0        # cosine floor
  c.freeze = ()               # regexes over trainable param paths ("a/b/kernel") kept fixed, no optimizer state
  # loop (aajax.train.loop)
  c.log_every = 10
  c.ckpt_every = 100
  c.keep = 3                  # last checkpoints kept (plus the best)
  c.ckpt_async = True
  c.eval_every = 0            # 0 = evaluate only at the end
  c.best_metric = ""          # a key of the task's evaluate() metrics; "" = no best checkpoint
  c.best_mode = "max"         # max | min
  c.export = True             # write <workdir>/export (final trainable params) at the end
  c.stop_on_nan = True        # a non-finite logged metric stops the run with an error
  c.profile_steps = 0         # > 0: JAX profiler trace of that many steps after the first, in <workdir>/profile
  return c


def with_defaults(config) -> ml_collections.ConfigDict:
  """A copy of `config` with every missing train field filled from `train_defaults()`."""
  out = ml_collections.ConfigDict(config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config))
  for key, value in train_defaults().items():
    if key not in out:
      out[key] = value
  return out


def parse_config_arg(arg, defaults: dict, switches=()) -> dict:
  """The argument of a config file's get_config, "word,key=value,...", over `defaults`: key=value sets
  a key of `defaults`; a bare word is one of `switches` (set to True) or, if `defaults` has a "size",
  the size. Anything else is a ConfigError naming what is accepted."""
  out = {**defaults, **{name: False for name in switches}}
  accepted = [f"{k}=<value>" for k in defaults if k != "size"] + list(switches)
  accepted += ["<size>"] if "size" in defaults else []
  for part in filter(None, (arg or "").split(",")):
    key, sep, value = part.partition("=")
    if sep and key in defaults and key != "size":
      out[key] = value
    elif not sep and key in switches:
      out[key] = True
    elif not sep and "size" in defaults:
      out["size"] = key
    else:
      raise ConfigError(f"unknown argument {part!r} to the config file; accepted: {', '.join(accepted)}")
  return out


def _load_module(path: str):
  if not os.path.isfile(path):
    raise ConfigError(f"config file not found: {path}")
  name = "aajax_config_" + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except SyntaxError as e:
    raise ConfigError(f"config file {path} does not parse: {e}") from None
  if not callable(getattr(module, "get_config", None)):
    raise ConfigError(f"config file {path} defines no get_config(arg=None)")
  return module


def load_config(spec: str) -> ml_collections.ConfigDict:
  """'path.py' or 'path.py:arg' -> get_config(arg)."""
  path, sep, arg = spec.partition(":")
  module = _load_module(path)
  takes_arg = bool(inspect.signature(module.get_config).parameters)
  if sep and not takes_arg:
    raise ConfigError(f"config file {path} takes no argument, got {arg!r}")
  config = module.get_config(arg if sep else None) if takes_arg else module.get_config()
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(f"get_config of {path} returned {type(config).__name__}, expected a ConfigDict")
  return config


def _parse_value(key: str, text: str, current):
  def literal(s):
    try:
      return ast.literal_eval(s)
    except (ValueError, SyntaxError):
      return s
  try:
    if isinstance(current, bool):
      low = text.strip().lower()
      if low not in ("true", "false", "1", "0", "yes", "no"):
        raise ValueError(text)
      return low in ("true", "1", "yes")
    if isinstance(current, int):
      return int(text)
    if isinstance(current, float):
      return float(text)
    if isinstance(current, str):
      return text
    if isinstance(current, (tuple, list)):
      if not text.strip():
        return type(current)()
      value = literal(text)
      if isinstance(value, str):
        value = tuple(literal(v.strip()) for v in text.split(","))
      if not isinstance(value, (tuple, list)):
        value = (value,)
      return type(current)(value)
  except ValueError:
    raise ConfigError(f"config key {key!r} expects a {type(current).__name__}, got {text!r}") from None
  return literal(text)


def _unknown(key: str, candidates) -> ConfigError:
  close = difflib.get_close_matches(key.rsplit(".", 1)[-1], list(candidates), n=3)
  hint = f"; did you mean {', '.join(close)}?" if close else ""
  return ConfigError(f"unknown config key {key!r}{hint}")


def set_override(config: ml_collections.ConfigDict, key: str, text: str) -> None:
  """config.<key> = parsed text; `key` may be dotted ("stage_image.lr"). A stage section may set any
  key of the shared config, and a missing section of a listed stage is created."""
  parts = key.split(".")
  node, shared = config, None
  for i, part in enumerate(parts[:-1]):
    if part not in node:
      stage = part[len(STAGE_PREFIX):] if part.startswith(STAGE_PREFIX) and node is config else None
      if stage is not None and stage in tuple(config.get("stages", ())):
        node[part] = ml_collections.ConfigDict()
      else:
        raise _unknown(".".join(parts[:i + 1]), node.keys())
    if not isinstance(node[part], ml_collections.ConfigDict):
      raise ConfigError(f"config key {'.'.join(parts[:i + 1])!r} is a {type(node[part]).__name__}, not a section")
    shared = config if (node is config and part.startswith(STAGE_PREFIX)) else None
    node = node[part]
  leaf = parts[-1]
  if leaf in node:
    current = node[leaf]
  elif shared is not None and leaf in shared and not isinstance(shared[leaf], ml_collections.ConfigDict):
    current = shared[leaf]
  else:
    raise _unknown(key, list(node.keys()) + (list(shared.keys()) if shared is not None else []))
  if isinstance(current, ml_collections.ConfigDict):
    raise ConfigError(f"config key {key!r} is a section; set one of its fields ({', '.join(current.keys())})")
  value = _parse_value(key, text, current)
  with node.ignore_type():
    node[leaf] = value


def apply_overrides(config: ml_collections.ConfigDict, overrides) -> ml_collections.ConfigDict:
  """overrides: {"a.b": "text"} or ["a.b=text", ...]; applied in order, in place; returns config."""
  items = overrides.items() if isinstance(overrides, dict) else (_split(o) for o in overrides)
  for key, text in items:
    set_override(config, key, text)
  return config


def _split(override: str) -> tuple[str, str]:
  key, sep, text = override.partition("=")
  if not sep:
    raise ConfigError(f"config override {override!r} needs the form key=value")
  return key.strip(), text


def split_argv(argv: list[str], flag: str = "config") -> tuple[list[str], list[str]]:
  """argv -> (argv without `--<flag>.k=v`, ["k=v", ...]) so absl never sees the dynamic keys."""
  rest, overrides = [], []
  prefix = f"--{flag}."
  i = 0
  while i < len(argv):
    arg = argv[i]
    if arg.startswith(prefix):
      body = arg[len(prefix):]
      if "=" not in body:
        if i + 1 >= len(argv):
          raise ConfigError(f"{arg} needs a value")
        body += "=" + argv[i + 1]
        i += 1
      overrides.append(body)
    else:
      rest.append(arg)
    i += 1
  return rest, overrides
