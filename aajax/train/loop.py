"""The training loop of one stage: `train(task, config, workdir) -> TrainResult`.

It resumes from the newest good checkpoint in `workdir` (params, optimizer state, step, data
position, RNG), so a run that was killed and restarted with the same command continues exactly
where the last checkpoint left it, bit for bit. Along the way it prints progress lines (loss,
steps/s, ETA), appends metrics to `workdir/metrics.jsonl`, evaluates every `eval_every` steps and at
the end, keeps the best checkpoint by `best_metric`, and exports the final trainable params.

SIGTERM or SIGINT (pre-emption, Ctrl-C) lets the current step finish, saves a checkpoint and returns
with `interrupted=True`; a second SIGINT aborts at once. In multi-process runs the processes agree on
stopping every `log_every` steps, so they all stop at the same step.
"""
import dataclasses
import json
import math
import os
import signal
import threading
import time

import jax
import numpy as np

from aajax.errors import AajaxError, ConfigError, DataError
from aajax.train import checkpoint as ckpt_lib
from aajax.train import optim, sharding
from aajax.train.config import with_defaults
from aajax.train.mesh import barrier, describe, make_mesh, shard_batch, to_host
from aajax.train.step import cast_floats, compute_dtype, init_train_state, make_train_step
from aajax.train.task import optional, task_optimizer

METRICS_FILE = "metrics.jsonl"
DONE_FILE = "done.json"


@dataclasses.dataclass
class TrainResult:
  workdir: str
  step: int                        # steps completed
  train_metrics: dict              # means over the last logged window
  eval_metrics: dict               # the last evaluation ({} if none)
  best: dict | None                # {"metric", "value", "step"} of the best checkpoint
  interrupted: bool                # stopped by a signal before `steps`
  export: str | None               # the export directory, when written
  trainable: object = None         # final trainable params (global arrays)
  frozen: object = None


def _is_main() -> bool:
  return jax.process_index() == 0


def _say(message: str) -> None:
  if _is_main():
    print(message, flush=True)


def _fmt_duration(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  seconds = int(round(seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class _StopRequest:
  """Turns SIGTERM/SIGINT into a flag the loop polls between steps (main thread only)."""

  def __init__(self):
    self.requested = None
    self._old = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._old[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    if self.requested is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.requested = signal.Signals(signum).name

  def __exit__(self, *exc):
    for sig, old in self._old.items():
      signal.signal(sig, old)

  def agreed(self) -> bool:
    """True when any process was asked to stop (a collective in multi-process runs)."""
    if jax.process_count() == 1:
      return self.requested is not None
    from jax.experimental import multihost_utils
    flags = multihost_utils.process_allgather(np.asarray(self.requested is not None, np.int32))
    return bool(np.any(flags))


class _MetricsLog:
  """metrics.jsonl of process 0; on resume, records past the restored step are dropped."""

  def __init__(self, workdir: str, resumed_step: int):
    self.path = os.path.join(workdir, METRICS_FILE)
    if _is_main() and os.path.exists(self.path):
      keep = []
      with open(self.path) as f:
        for line in f:
          try:
            if json.loads(line).get("step", 0) <= resumed_step:
              keep.append(line if line.endswith("\n") else line + "\n")
          except json.JSONDecodeError:
            pass   # a line cut by a kill
      tmp = self.path + ".tmp"
      with open(tmp, "w") as f:
        f.writelines(keep)
      os.replace(tmp, self.path)

  def write(self, record: dict) -> None:
    if _is_main():
      with open(self.path, "a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")


def _mean_metrics(window: list) -> dict:
  host = jax.device_get(window)
  return {k: float(np.mean([m[k] for m in host])) for k in host[0]}


def _scalars(metrics: dict) -> dict:
  """The scalar entries of an evaluate() result (tables or arrays it may add are not logged)."""
  out = {}
  for k, v in metrics.items():
    try:
      out[k] = float(v)
    except (TypeError, ValueError):
      pass
  return out


def _better(value: float, best: dict | None, mode: str) -> bool:
  if best is None:
    return True
  return value > best["value"] if mode == "max" else value < best["value"]


def _read_done(workdir: str) -> dict | None:
  try:
    with open(os.path.join(workdir, DONE_FILE)) as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError):
    return None


def _start_profile(config, workdir: str, step: int) -> int | None:
  """Starts a profiler trace (each process its own) of the next `profile_steps` steps."""
  if int(config.profile_steps) <= 0 or step >= int(config.steps):
    return None
  jax.profiler.start_trace(os.path.join(workdir, "profile", f"process_{jax.process_index()}"))
  return min(step + int(config.profile_steps), int(config.steps))


@dataclasses.dataclass
class Prepared:
  """A stage ready to train: the train state and frozen params laid out on the mesh, and the step."""
  mesh: object
  tx: object
  state: dict
  frozen: object
  state_specs: dict
  frozen_specs: object

  def train_step(self, task, config, donate: bool = True):
    return make_train_step(task.loss_fn, self.tx, self.mesh, accum=config.accum, dtype=config.dtype, donate=donate,
                           state_specs=self.state_specs, frozen_specs=self.frozen_specs)


def prepare(task, config, mesh) -> Prepared:
  """task.init, then params, optimizer state and frozen params placed by the sharding rules of `config`
  (replicated, or split over the mesh's fsdp / expert axes)."""
  init_rng, state_rng = jax.random.split(jax.random.key(int(config.seed)))
  frozen, trainable = task.init(init_rng, config)
  barrier("task_init")   # processes finish init at different times; the next collectives need them together
  rules = sharding.rules_from_config(config)
  frozen = cast_floats(frozen, compute_dtype(config.dtype))
  frozen_specs = sharding.tree_specs(rules, mesh, frozen)
  frozen = sharding.put(mesh, frozen, frozen_specs)
  tx = task_optimizer(task, config)
  state_specs = sharding.state_specs(rules, mesh, trainable, tx)
  state = init_train_state(mesh, sharding.put(mesh, trainable, state_specs["params"]), tx, state_rng, state_specs)
  return Prepared(mesh, tx, state, frozen, state_specs, frozen_specs)


def train(task, config, workdir: str, *, mesh=None) -> TrainResult:
  """Trains one stage (config.stage, default the task's first) of `task` in `workdir`."""
  config = with_defaults(config)
  if not config.get("stage"):
    config.stage = task.stages[0]
  if config.best_mode not in ("max", "min"):
    raise ConfigError(f"best_mode must be 'max' or 'min', got {config.best_mode!r}")
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  mesh = make_mesh(spec=config.mesh) if mesh is None else mesh
  steps = int(config.steps)
  prepared = prepare(task, config, mesh)

  ckpt = ckpt_lib.Checkpointer(workdir, keep=config.keep, async_save=config.ckpt_async)
  try:
    return _run(task, config, workdir, prepared, ckpt, steps)
  finally:
    ckpt.wait()
    ckpt.close()


def _run(task, config, workdir, prepared, ckpt, steps) -> TrainResult:
  mesh, state, frozen = prepared.mesh, prepared.state, prepared.frozen
  prepared.state = prepared.frozen = None   # the loop owns them now (the state is donated each step)
  restored = ckpt.restore_latest(state)
  data_state, best = None, None
  if restored is not None:
    state, meta = restored
    data_state, best = meta.get("data_state"), meta.get("best")
  step = int(to_host(state["step"]))
  if restored is not None:
    _say(f"[{config.stage}] resumed from {workdir} at step {step}")
  done = _read_done(workdir)
  if step >= steps and done is not None:
    return TrainResult(workdir, step, done.get("train_metrics", {}), done.get("eval_metrics", {}), best, False,
                       done.get("export"), state["params"], frozen)

  log = _MetricsLog(workdir, step)
  n = mesh.devices.size
  _say(f"[{config.stage}] {n} devices in {jax.process_count()} processes; global batch {config.batch_size} "
       f"({int(config.batch_size) // n} per device, accum {config.accum}, {config.dtype}); {steps} steps")
  if describe(mesh) != f"data {n}":
    local, whole = sharding.sharded_bytes((state["params"], state["opt_state"], frozen))
    _say(f"[{config.stage}] mesh {describe(mesh)}: params, optimizer state and frozen params take "
         f"{local / 2**20:.1f} MiB per device of {whole / 2**20:.1f} MiB")
  data = task.train_data(config, data_state)
  train_step = prepared.train_step(task, config)
  evaluate = optional(task, "evaluate")
  if config.best_metric and evaluate is None:
    raise ConfigError(f"best_metric={config.best_metric!r} needs a task with evaluate(); task {config.task!r} has none")
  lr_at = optim.lr_schedule(config) if optional(task, "optimizer") is None else None
  log_every, ckpt_every, eval_every = max(int(config.log_every), 1), int(config.ckpt_every), int(config.eval_every)

  def meta():
    return {"step": step, "data_state": data.get_state(), "best": best, "stage": config.stage}

  def run_eval():
    nonlocal best
    if evaluate is None:
      return {}
    t0 = time.time()
    metrics = _scalars(evaluate(state["params"], frozen, config, workdir) or {})
    log.write({"step": step, "split": "eval", "eval_seconds": time.time() - t0, **metrics})
    _say(f"[{config.stage}] eval at step {step}: " + "  ".join(f"{k} {v:.4g}" for k, v in sorted(metrics.items())))
    name = config.best_metric
    if name:
      if name not in metrics:
        raise ConfigError(f"best_metric {name!r} is not among the evaluation metrics: {', '.join(sorted(metrics))}")
      if _better(metrics[name], best, config.best_mode):
        best = {"metric": name, "value": metrics[name], "step": step}
        ckpt.save_best(step, state, meta())
    return metrics

  train_metrics, eval_metrics, window = {}, {}, []
  interrupted = False
  t_window, steps_window, profile_until = None, 0, None
  with _StopRequest() as stop:
    while step < steps:
      try:
        batch = next(data)
      except StopIteration:
        raise DataError(f"the training data ran out after {step} of {steps} steps") from None
      global_batch = shard_batch(mesh, batch, int(config.batch_size))
      if t_window is None:           # compile ahead, then start together (see mesh.barrier)
        train_step = train_step.lower(state, frozen, global_batch).compile()
        barrier("train_step")
      state, metrics = train_step(state, frozen, global_batch)
      step += 1
      window.append(metrics)
      if t_window is None:           # the first step includes compilation: time from its end
        jax.block_until_ready(metrics)
        t_window, steps_window = time.time(), 0
        profile_until = _start_profile(config, workdir, step)
      else:
        steps_window += 1
      if step == profile_until:
        jax.block_until_ready(metrics)
        jax.profiler.stop_trace()
        _say(f"[{config.stage}] profiler trace of steps {step - int(config.profile_steps) + 1}..{step} in "
             f"{os.path.join(workdir, 'profile')}")
      if step % log_every == 0 or step == steps:
        train_metrics = _mean_metrics(window)
        window = []
        if config.stop_on_nan and not all(math.isfinite(v) for v in train_metrics.values()):
          bad = ", ".join(f"{k}={v}" for k, v in sorted(train_metrics.items()) if not math.isfinite(v))
          raise AajaxError(f"training diverged by step {step} ({bad}); the last checkpoint is at step "
                           f"{ckpt.latest_step()}. Lower lr or set grad_clip, then resume or use a new workdir")
        now = time.time()
        rate = steps_window / (now - t_window) if steps_window else float("nan")
        record = {"step": step, "split": "train", **train_metrics}
        if lr_at is not None:
          record["lr"] = float(lr_at(step - 1))
        if steps_window:
          record["steps_per_s"] = rate
        log.write(record)
        shown = "  ".join(f"{k} {v:.4g}" for k, v in sorted(train_metrics.items()))
        _say(f"[{config.stage}] step {step}/{steps}  {shown}  {rate:.2f} steps/s  "
             f"ETA {_fmt_duration((steps - step) / rate if steps_window else float('nan'))}")
        t_window, steps_window = now, 0
      if eval_every > 0 and step % eval_every == 0 and step < steps:
        eval_metrics = run_eval()
      if ckpt_every > 0 and step % ckpt_every == 0 and step < steps:
        ckpt.save(step, state, meta())
      if (jax.process_count() == 1 or step % log_every == 0) and stop.agreed():
        interrupted = True
        _say(f"[{config.stage}] {stop.requested or 'stop'} received: checkpointing step {step} and exiting")
        ckpt.save(step, state, meta())
        break

  if profile_until is not None and step < profile_until:
    jax.profiler.stop_trace()
  if not interrupted:
    ckpt.save(step, state, meta())
    if evaluate is not None:
      eval_metrics = run_eval()
  ckpt.wait()
  export = None
  if not interrupted:
    if config.export:
      export = ckpt_lib.export_params(workdir, state["params"],
                                      {"stage": config.stage, "step": step, "task": config.task})
      task_export = optional(task, "export")
      if task_export is not None:
        task_export(state["params"], frozen, config, workdir)
    if _is_main():
      with open(os.path.join(workdir, DONE_FILE), "w") as f:
        json.dump({"step": step, "train_metrics": train_metrics, "eval_metrics": eval_metrics, "best": best,
                   "export": export}, f, indent=2, sort_keys=True)
    _say(f"[{config.stage}] done: {step} steps in {workdir}")
  return TrainResult(workdir, step, train_metrics, eval_metrics, best, interrupted, export, state["params"], frozen)

