"""Host-side batching of `Sample`s into numpy batches, with prefetch, multi-host sharding and an
exact resumable position.

Order. Epoch e visits the samples in `permutation(seed, e)` (or in file order without shuffle).
`batch_size` is the GLOBAL batch: every process computes the same global batch and keeps its own
contiguous slice of `batch_size // process_count` rows, so the union over processes is the global
batch whatever the process count, and all processes share one position.

Modes.
  repeat (default when shuffle): endless. With drop_remainder (the default there) each epoch yields
    len // batch_size full batches and drops its tail; without it the stream runs on into the
    next epoch so every sample is seen and batches stay full.
  one pass (default without shuffle): every sample exactly once; the last batch is padded to the
    full batch size with copies marked `valid == False` (static shapes for jit), or left short with
    pad_remainder=False.

Fields: images float32 [b, H, W, 3], masks float32 [b, H, W] {0,1}, labels int32, class_ids int32
(index into `class_names`), valid bool (False on padding rows), indices int32 (into `samples`) and,
unless with_ids=False, ids (object array of strings: host-side only; device code must drop it).
b = batch_size // process_count.

Position. `get_state()` is the position after the last batch the iterator has handed out
({"epoch", "index"}: the next sample of that epoch's order), JSON-friendly, to be saved with a
checkpoint; `set_state()` then `iter()` continues with exactly the batch that would have come next.
Augmentations draw from a generator keyed by (seed, epoch, position in epoch), so a resumed or
differently sharded run sees the same pixels.
"""
import concurrent.futures
import os

import numpy as np

from aajax.data import transforms
from aajax.errors import DataError, InputError


class Loader:
  def __init__(self, samples, batch_size: int, image_size: int, norm="clip", shuffle: bool = False,
               seed: int = 0, drop_remainder=None, augment: bool = False, process_index: int = 0,
               process_count: int = 1, repeat=None, pad_remainder: bool = True, class_names=None,
               prefetch: int = 2, num_workers=None, cache: bool = False, with_ids: bool = True):
    if not samples:
      raise DataError("the loader got no samples (empty split or no class matched)")
    if batch_size <= 0 or batch_size % process_count:
      raise InputError(f"global batch_size {batch_size} must be a positive multiple of "
                       f"process_count {process_count}")
    if not 0 <= process_index < process_count:
      raise InputError(f"process_index {process_index} not in [0, {process_count})")
    self.samples = list(samples)
    self.batch_size = batch_size
    self.local_batch_size = batch_size // process_count
    self.image_size = image_size
    self.norm = norm
    self.shuffle = shuffle
    self.seed = seed
    self.repeat = shuffle if repeat is None else repeat
    self.drop_remainder = self.repeat if drop_remainder is None else drop_remainder
    self.pad_remainder = pad_remainder
    self.augment = augment
    self.process_index, self.process_count = process_index, process_count
    self.prefetch = max(prefetch, 0)
    self.num_workers = num_workers or min(4, os.cpu_count() or 1)
    if class_names is None:  # first-appearance order, stable for a given sample list
      class_names = list(dict.fromkeys(s.class_name for s in self.samples))
    self.class_names = list(class_names)
    self._class_index = {c: i for i, c in enumerate(self.class_names)}
    missing = sorted({s.class_name for s in self.samples} - set(self._class_index))
    if missing:
      raise DataError(f"samples of classes {missing} are not in class_names {self.class_names}")
    if self.repeat and self.drop_remainder and len(self.samples) < batch_size:
      raise DataError(f"{len(self.samples)} samples cannot fill one batch of {batch_size} "
                      "with drop_remainder")
    self._cache = {} if cache else None
    self._state = {"epoch": 0, "index": 0}
    self._iterator = None
    self.with_ids = with_ids

  # ------------------------------------------------------------------------------------ position
  def get_state(self) -> dict:
    return dict(self._state)

  def set_state(self, state: dict) -> None:
    """Continue from a saved position at the next `iter()`."""
    epoch, index = int(state["epoch"]), int(state["index"])
    if epoch < 0 or not 0 <= index <= len(self.samples):
      raise InputError(f"loader state {state} is out of range for {len(self.samples)} samples")
    self._state = {"epoch": epoch, "index": index}
    if self._iterator is not None:
      self._iterator.close()
      self._iterator = None

  @property
  def steps_per_epoch(self) -> int:
    n, b = len(self.samples), self.batch_size
    return n // b if self.drop_remainder else -(-n // b)

  def __len__(self):
    """Batches per epoch (one pass: the number of batches it yields)."""
    return self.steps_per_epoch

  def _order(self, epoch: int) -> np.ndarray:
    if not self.shuffle:
      return np.arange(len(self.samples))
    return np.random.default_rng([self.seed, epoch]).permutation(len(self.samples))

  def _plan(self, state):
    """Global batch for position `state`: (sample indices, (epoch, pos) keys, n valid, next state)
    or None at the end of a one-pass run."""
    n, b = len(self.samples), self.batch_size
    epoch, index = state["epoch"], state["index"]
    if self.repeat and self.drop_remainder and index + b > n:
      epoch, index = epoch + 1, 0
    if not self.repeat and index >= n:
      return None
    picks, keys = [], []
    while len(picks) < b:
      order = self._order(epoch)
      take = min(b - len(picks), n - index)
      picks.extend(order[index:index + take])
      keys.extend((epoch, i) for i in range(index, index + take))
      index += take
      if len(picks) < b:
        if not self.repeat:
          break
        epoch, index = epoch + 1, 0
    n_valid = len(picks)
    if n_valid < b:
      if self.drop_remainder:
        return None
      if self.pad_remainder:  # pad with copies of the first pick, marked invalid
        picks += [picks[0]] * (b - n_valid)
        keys += [keys[0]] * (b - n_valid)
    return np.asarray(picks), keys, n_valid, {"epoch": epoch, "index": index}

  # ---------------------------------------------------------------------------------- one sample
  def _load(self, i: int):
    if self._cache is not None and i in self._cache:
      return self._cache[i]
    s = self.samples[i]
    image = s.load_image()
    mask = s.load_mask(image.shape[:2])
    out = (transforms.resize_image(image, self.image_size) if not self.augment else image,
           transforms.resize_mask(mask, self.image_size))
    if self._cache is not None:
      self._cache[i] = out
    return out

  def _example(self, i: int, key):
    image, mask = self._load(i)
    if self.augment:
      rng = np.random.default_rng([self.seed, 1, key[0], key[1]])
      image = transforms.resize_image(transforms.color_jitter(image, rng), self.image_size)
      x = transforms.normalize(image, self.norm)
      x, m = transforms.random_geometry(x, mask.astype(np.float32), rng)
    else:
      x, m = transforms.normalize(image, self.norm), mask.astype(np.float32)
    return x, m

  def _batch(self, plan):
    picks, keys, n_valid, _ = plan
    lo = self.process_index * self.local_batch_size
    rows = range(lo, lo + self.local_batch_size)
    examples = [self._example(int(picks[r]), keys[r]) for r in rows if r < len(picks)]
    samples = [self.samples[int(picks[r])] for r in rows if r < len(picks)]
    batch = {
        "images": np.stack([e[0] for e in examples]).astype(np.float32, copy=False),
        "masks": np.stack([e[1] for e in examples]).astype(np.float32, copy=False),
        "labels": np.asarray([s.label for s in samples], np.int32),
        "class_ids": np.asarray([self._class_index[s.class_name] for s in samples], np.int32),
        "valid": np.asarray([r < n_valid for r in rows if r < len(picks)], bool),
        "indices": np.asarray([picks[r] for r in rows if r < len(picks)], np.int32),
    }
    if self.with_ids:  # strings: host-side only, drop before putting a batch on devices
      batch["ids"] = np.asarray([s.id for s in samples], object)
    return batch

  # ----------------------------------------------------------------------------------- iteration
  def __next__(self):
    """The loader is also its own iterator (the training stack's DataIterator protocol)."""
    if self._iterator is None:
      self._iterator = iter(self)
    return next(self._iterator)

  def __iter__(self):
    state = dict(self._state)
    if self.prefetch == 0:
      while (plan := self._plan(state)) is not None:
        state = plan[3]
        batch = self._batch(plan)
        self._state = dict(state)
        yield batch
      return
    with concurrent.futures.ThreadPoolExecutor(self.num_workers) as pool:
      pending = []  # (future batch, state after it), in order
      try:
        while True:
          while len(pending) <= self.prefetch:
            plan = self._plan(state)
            if plan is None:
              break
            state = plan[3]
            pending.append((pool.submit(self._batch, plan), dict(state)))
          if not pending:
            return
          future, after = pending.pop(0)
          batch = future.result()
          self._state = after
          yield batch
      finally:
        for f, _ in pending:
          f.cancel()

