"""Shared converter machinery: read checkpoint files, apply a name table, check every tensor.

A converter is (1) a reader producing a flat {torch name: numpy array} dict, (2) a table of rows
(flax path, torch name, transform), (3) the expected parameter shapes from `jax.eval_shape` of the
model's init. `apply_table` checks the checkpoint against all three and reports every missing,
unexpected and wrongly shaped tensor by name before anything is written.
"""
import os
import pickle
import warnings
import zipfile
from typing import Iterable

import jax
import numpy as np

from aajax.errors import CheckpointError
from aajax.params import flatten, unflatten  # noqa: F401  (re-exported for converters)

MAX_LISTED = 8


def expected_shapes(model, *example_args) -> dict:
  """{flax path: shape} of a model's params, computed without allocating them."""
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *example_args))["params"]
  return {p: tuple(s.shape) for p, s in flatten(shapes).items()}


def _listing(items: list[str]) -> str:
  more = f" (+{len(items) - MAX_LISTED} more)" if len(items) > MAX_LISTED else ""
  return "; ".join(items[:MAX_LISTED]) + more


def raise_on_mismatch(source: str, against: str, missing=(), bad_shape=(), extra=()) -> None:
  """One CheckpointError naming every missing, wrongly shaped and unexpected tensor, if there is any."""
  problems = [f"{len(items)} {what} tensor(s): {_listing(list(items))}"
              for what, items in (("missing", missing), ("wrongly shaped", bad_shape), ("unexpected", extra)) if items]
  if problems:
    raise CheckpointError(f"{source} does not match {against}: " + " | ".join(problems))


def linear_rows(path: tuple, name: str, bias: bool = True):
  """Table rows of a torch Linear (weight [out, in], stored transposed as kernel [in, out])."""
  yield path + ("kernel",), f"{name}.weight", "T"
  if bias:
    yield path + ("bias",), f"{name}.bias", "id"


def norm_rows(path: tuple, name: str):
  """Table rows of a torch LayerNorm (weight -> scale)."""
  yield path + ("scale",), f"{name}.weight", "id"
  yield path + ("bias",), f"{name}.bias", "id"


def apply_table(state: dict, rows: Iterable, shapes: dict, transforms: dict, source: str,
                ignore_prefixes: tuple[str, ...] = ()) -> dict:
  """Flat torch state -> nested flax params, or CheckpointError naming every problem."""
  rows = list(rows)
  missing, bad_shape, flat = [], [], {}
  for path, name, transform in rows:
    if name not in state:
      missing.append(name)
      continue
    value = transforms[transform][0](np.asarray(state[name]))
    want = shapes.get(path)
    if want is None:
      raise KeyError(f"converter table names {'/'.join(path)}, which the model does not have")
    if tuple(value.shape) != want:
      bad_shape.append(f"{name}: expected {tuple(transforms[transform][1](np.zeros(want)).shape)}, "
                       f"found {tuple(np.shape(state[name]))}")
      continue
    flat[path] = np.asarray(value, np.float32)  # no copy for float32 views of the checkpoint
  missing, bad_shape = list(dict.fromkeys(missing)), list(dict.fromkeys(bad_shape))  # fused tensors fill 3 rows
  used = {name for _, name, _ in rows}
  extra = sorted(k for k in state if k not in used and not k.startswith(ignore_prefixes))
  raise_on_mismatch(source, "the model", missing, bad_shape, extra)
  unfilled = sorted("/".join(p) for p in shapes if p not in flat)
  if unfilled:
    raise CheckpointError(f"{source}: the model has parameters no checkpoint tensor fills: {_listing(unfilled)}")
  return unflatten(flat)


def export_state(params, rows: Iterable, transforms: dict) -> dict:
  """The inverse of `apply_table`: nested params -> flat checkpoint tensors in the original layout.

  Only for tables whose rows map one tensor each (HF after `fuse_split`, big_vision); used to write
  checkpoints in the original formats (demo, tests).
  """
  flat = flatten(params)
  return {name: np.array(transforms[transform][1](np.asarray(flat[path])), order="C")
          for path, name, transform in rows}


# -- readers ------------------------------------------------------------------------------------
def require_file(path: str, what: str) -> str:
  if not os.path.exists(path):
    raise CheckpointError(f"{what} not found: {path}")
  return path


def read_safetensors(path: str) -> dict:
  from safetensors import SafetensorError
  from safetensors.numpy import load_file
  require_file(path, "safetensors file")
  try:
    return _to_float32_numpy(load_file(path))
  except (SafetensorError, OSError, ValueError) as e:
    raise CheckpointError(f"cannot read safetensors file {path}: {e}") from None
  except Exception as e:  # bf16 tensors cannot be loaded as numpy directly
    if "bfloat16" not in str(e) and "bf16" not in str(e).lower():
      raise
    return read_torch_state(path, safetensors=True)


def _to_float32_numpy(state: dict) -> dict:
  return {k: (v.astype(np.float32) if v.dtype.kind == "f" else v) for k, v in state.items()}


def read_torch_state(path: str, safetensors: bool = False) -> dict:
  """A torch `.pt`/`.pth`/`.bin` state dict (or TorchScript archive) as float32 numpy arrays."""
  require_file(path, "checkpoint file")
  try:
    import torch
  except ImportError:
    raise CheckpointError(f"reading {os.path.basename(path)} needs PyTorch: pip install torch==2.13.0") from None
  if safetensors:
    from safetensors.torch import load_file
    tensors = load_file(path)
  else:
    tensors = _torch_load(torch, path)
  out = {}
  for k, v in tensors.items():
    if isinstance(v, torch.Tensor):
      v = v.detach().cpu()
      out[k] = (v.float() if v.is_floating_point() else v).numpy()
  return out


def _torch_load(torch, path):
  if not zipfile.is_zipfile(path):
    raise CheckpointError(f"{path} is not a PyTorch checkpoint (not a zip archive; truncated or another format?)")
  try:
    with zipfile.ZipFile(path) as z:
      is_script = any(n.endswith("constants.pkl") for n in z.namelist())
    if is_script:  # OpenAI's released CLIP files are TorchScript archives
      with warnings.catch_warnings():  # torch deprecates TorchScript; the released files still are
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.load(path, map_location="cpu").state_dict()
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except (RuntimeError, pickle.UnpicklingError, EOFError, zipfile.BadZipFile) as e:
    raise CheckpointError(f"cannot read PyTorch checkpoint {path}: {str(e).splitlines()[0]}") from None
  for key in ("state_dict", "model", "module"):  # common wrappers around the state dict
    if isinstance(obj, dict) and isinstance(obj.get(key), dict):
      obj = obj[key]
  if not isinstance(obj, dict):
    raise CheckpointError(f"{path} does not hold a state dict (found {type(obj).__name__})")
  return obj
