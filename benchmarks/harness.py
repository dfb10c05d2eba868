"""What every benchmark shares: timing with warm-up and median, compile time apart, CPU accounting.

The machine may be shared, so each measurement records the CPU seconds this process used and the
CPU seconds the whole machine used meanwhile; `other_cpu_s` (their difference) says how contended
the figure is, and `contended` flags a phase where other processes took more than a quarter of
a core on average. Wall times are medians of several runs after a first call that compiles.
"""
import json
import os
import platform
import resource
import statistics
import time

import benchmarks


def machine_busy_s() -> float:
  """CPU seconds (all cores, user + system + irq) the machine has spent since boot."""
  with open("/proc/stat") as f:
    fields = [float(x) for x in f.readline().split()[1:]]
  return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
  r = resource.getrusage(resource.RUSAGE_SELF)
  return r.ru_utime + r.ru_stime


def rss_mib() -> float:
  """Resident memory of this process now."""
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmRSS:"):
        return int(line.split()[1]) / 1024
  return float("nan")


def peak_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(fn, runs: int = 5, warmup: int = 1) -> dict:
  """Call fn() (which must block until its result is ready) warmup + runs times.

  Returns {first_s: the first call (compile + run), median_s, min_s, runs, other_cpu_s, contended}."""
  t0 = time.perf_counter()
  fn()
  first = time.perf_counter() - t0
  for _ in range(warmup - 1):
    fn()
  busy0, own0, wall0 = machine_busy_s(), own_cpu_s(), time.perf_counter()
  times = []
  for _ in range(runs):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  wall = time.perf_counter() - wall0
  other = max(0.0, (machine_busy_s() - busy0) - (own_cpu_s() - own0))
  return {"first_s": first, "median_s": statistics.median(times), "min_s": min(times), "runs": runs,
          "other_cpu_s": round(other, 3), "contended": other > 0.25 * wall}


def environment() -> dict:
  import jax
  out = {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
         "jax": jax.__version__, "backend": jax.default_backend(), "devices": jax.device_count(),
         "host_memory_kept": benchmarks.HOST_MEMORY_KEPT}
  try:
    import torch
    out.update(torch=torch.__version__, torch_threads=torch.get_num_threads())
  except ImportError:
    pass
  return out


def write_json(path: str, doc: dict) -> None:
  """Atomic write of a results document, creating the folder."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(doc, f, indent=1)
  os.replace(tmp, path)
  print(f"wrote {path}")
