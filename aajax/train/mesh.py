"""The device mesh of training and moving host arrays onto it.

The mesh has three axes, always in this order (outermost first):
  data    pure data parallelism: params replicated along it
  expert  MoE expert weights split on their expert dimension along it (`aajax.train.sharding`)
  fsdp    ZeRO-3: large params and their optimizer state split along it, gathered inside the step
`config.mesh` sizes them ("data:-1", "data:2,fsdp:4"; -1 takes the devices left; an axis not named
has size 1). Every axis also splits the batch: each device of the mesh gets its own rows, so the
global batch is sharded on the flattened (data, expert, fsdp) axes. The innermost axis, fsdp, gets
neighbouring devices (the same host), where its per-step gathers are cheapest. Host data is per
process: each process feeds the rows of the global batch that its own devices hold.
"""
import logging
import os

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from aajax.errors import ConfigError, DataError

DATA, EXPERT, FSDP = "data", "expert", "fsdp"
AXES = (DATA, EXPERT, FSDP)


def maybe_initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                                 process_id: int | None = None) -> bool:
  """Starts JAX's multi-process runtime when this is one process of several. Returns True if started.

  Must run before any other JAX call. Explicit arguments win; otherwise the environment decides:
    JAX_COORDINATOR_ADDRESS (host:port) + JAX_NUM_PROCESSES + JAX_PROCESS_ID: explicit, any platform;
    a Slurm job step with several tasks, or a Cloud TPU VM: JAX detects everything itself.
  A plain single process (no such variables) starts nothing.
  """
  coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
  if num_processes is None and os.environ.get("JAX_NUM_PROCESSES"):
    num_processes = int(os.environ["JAX_NUM_PROCESSES"])
  if process_id is None and os.environ.get("JAX_PROCESS_ID"):
    process_id = int(os.environ["JAX_PROCESS_ID"])
  if coordinator_address:
    if num_processes is None or process_id is None:
      raise ConfigError("a coordinator address needs the number of processes and this process's id "
                        "(JAX_NUM_PROCESSES and JAX_PROCESS_ID, or --num_processes and --process_id)")
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
  elif int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_STEP_NODELIST" in os.environ:
    jax.distributed.initialize()
  elif os.environ.get("TPU_WORKER_HOSTNAMES", "").count(",") > 0:
    jax.distributed.initialize()
  else:
    return False
  logging.info("process %d of %d, %d local devices, %d in all", jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())
  return True


_BARRIERS = [0]


def barrier(name: str, timeout_s: int = 3600) -> None:
  """Every process waits here until all arrive (the coordination service, not a device collective).

  Called before the first run of a program with cross-process collectives: on CPU the collectives'
  (gloo) communicators are set up at first use and give up when the processes arrive more than
  about 30 s apart, as they do when one compiles a large program slower than the other.
  """
  if jax.process_count() == 1:
    return
  from orbax.checkpoint import multihost
  _BARRIERS[0] += 1
  multihost.get_jax_distributed_client().wait_at_barrier(f"aajax_{name}_{_BARRIERS[0]}", timeout_s * 1000)


def parse_mesh(spec: str | None, n_devices: int) -> dict:
  """"data:2,fsdp:4" -> {"data": 2, "expert": 1, "fsdp": 4}; one size may be -1 (the rest)."""
  sizes, free = {}, None
  for part in filter(None, (p.strip() for p in (spec or f"{DATA}:-1").split(","))):
    name, sep, value = part.partition(":")
    name = name.strip()
    if name not in AXES:
      raise ConfigError(f"mesh axis {name!r} unknown in mesh {spec!r}; axes: {', '.join(AXES)}")
    if name in sizes or name == free:
      raise ConfigError(f"mesh axis {name!r} given twice in mesh {spec!r}")
    try:
      size = int(value) if sep else -1
    except ValueError:
      raise ConfigError(f"mesh axis size {value!r} of {name!r} is not an integer (mesh {spec!r})") from None
    if size == -1:
      if free is not None:
        raise ConfigError(f"mesh {spec!r}: only one axis may be -1")
      free = name
    elif size < 1:
      raise ConfigError(f"mesh {spec!r}: axis {name!r} has size {size}")
    else:
      sizes[name] = size
  fixed = int(np.prod(list(sizes.values()), dtype=np.int64))
  if free is not None:
    if n_devices % fixed:
      raise ConfigError(f"mesh {spec!r}: {n_devices} devices do not divide into the fixed axes' {fixed}")
    sizes[free] = n_devices // fixed
  elif fixed != n_devices:
    raise ConfigError(f"mesh {spec!r} has {fixed} devices but there are {n_devices}; use -1 for one axis")
  return {name: sizes.get(name, 1) for name in AXES}


def make_mesh(devices=None, spec: str | None = None) -> Mesh:
  """The (data, expert, fsdp) mesh over `devices` (default: all devices of all processes).

  `spec` sizes the axes (`parse_mesh`); the default puts every device on `data`. Devices keep their
  `jax.devices()` order (by process, then local id), so each process's devices are contiguous.
  """
  devices = jax.devices() if devices is None else list(devices)
  sizes = parse_mesh(spec, len(devices))
  grid = np.asarray(devices).reshape(tuple(sizes[a] for a in AXES))
  return Mesh(grid, AXES, axis_types=(AxisType.Auto,) * len(AXES))


def describe(mesh: Mesh) -> str:
  """"data 2 x fsdp 4": the axes of size > 1 (or "data 1")."""
  parts = [f"{name} {size}" for name, size in mesh.shape.items() if size > 1]
  return " x ".join(parts) or f"{DATA} 1"


def batch_axes(mesh: Mesh) -> tuple:
  """Every mesh axis splits the batch."""
  return tuple(mesh.axis_names)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(batch_axes(mesh)))


def replicate(mesh: Mesh, tree):
  """Host (or device) arrays, equal on every process, -> global arrays replicated over the mesh."""
  sharding = replicated(mesh)

  def put(x):
    if isinstance(x, jax.Array) and x.sharding == sharding:
      return x
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])
  return jax.tree.map(put, tree)


def process_batch_size(mesh: Mesh, global_batch_size: int) -> int:
  """Rows of the global batch that this process feeds; checks that it divides over the devices."""
  n = mesh.devices.size
  if global_batch_size % n:
    raise ConfigError(f"batch_size {global_batch_size} is not a multiple of the {n} devices of the mesh")
  local_devices = sum(d.process_index == jax.process_index() for d in mesh.devices.flat)
  return global_batch_size // n * local_devices


def _process_rows(mesh: Mesh, global_batch_size: int) -> slice:
  """The rows of the global batch that live on this process's devices (contiguous in mesh order)."""
  per_device = global_batch_size // mesh.devices.size
  mine = [i for i, d in enumerate(mesh.devices.flat) if d.process_index == jax.process_index()]
  if mine != list(range(mine[0], mine[-1] + 1)):
    raise ConfigError("this process's devices are not contiguous on the data axis of the mesh")
  return slice(mine[0] * per_device, (mine[-1] + 1) * per_device)


def shard_batch(mesh: Mesh, batch: dict, global_batch_size: int) -> dict:
  """numpy batch -> global arrays sharded on `data`.

  `batch` holds either the whole global batch (each process keeps its own rows) or this process's
  share of it; with one process the two are the same.
  """
  local = process_batch_size(mesh, global_batch_size)
  sharding = batch_sharded(mesh)
  out = {}
  for name, x in batch.items():
    x = np.asarray(x)
    rows = x.shape[0] if x.ndim else None
    if rows == global_batch_size:
      x = x[_process_rows(mesh, global_batch_size)]
    elif rows != local:
      raise DataError(f"batch field {name!r} has {rows} rows; expected the global batch of {global_batch_size} "
                      f"or this process's share of {local}")
    out[name] = jax.make_array_from_process_local_data(sharding, x, (global_batch_size,) + x.shape[1:])
  return out


def to_host(tree):
  """numpy copy of a pytree of (possibly multi-process) arrays; replicated arrays are read locally."""
  from jax.experimental import multihost_utils

  def fetch(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      if not x.is_fully_replicated:
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
      x = x.addressable_data(0)
    return np.asarray(x)
  return jax.tree.map(fetch, tree)
