"""Scaling of the AA stage-2 (image adapters) train step over 1, 2, 4, 8 devices.

Each device count runs in its own subprocess, because the number of fake CPU devices
(`--xla_force_host_platform_device_count`) is fixed when JAX starts. In each it times, as the median
of --runs steps after a compiling one (compile time reported apart):
  weak     a fixed per-device batch (--per_device images): global batch grows with the devices;
           efficiency = images/s(n) / (n * images/s(1)), 1.0 is perfect
  strong   a fixed global batch (--global_batch images): efficiency = t(1) / (n * t(n))
  fsdp     on the largest count, the weak setup again with params, optimizer state and the frozen
           backbone split over an fsdp axis (mesh data:2,fsdp:n/2 and fsdp:n)

On a CPU machine the fake devices share the same few cores, so the devices add no compute: the
figures measure what the sharded program costs over the single-device one (collectives, per-device
launch, smaller per-device matmuls), not the speed-up real accelerators would give. On a machine
with real accelerators (`--real`) the same runs use the first n of its devices.

  python -m benchmarks.scaling [--size demo|tiny] [--devices 1 2 4 8] [--runs 5] [--out benchmarks/results/scaling.json]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

SIZES = {
    # the README demo's model (configs/aa_siglip.py): SigLIP-shaped, 6 blocks of width 128, 128 px
    "demo": {},
    # the test model of tests/anomaly: 4 blocks of width 32, 32 px
    "tiny": {"model.tower.width": "32", "model.tower.depth": "4", "model.tower.heads": "2", "model.tower.mlp_dim": "64",
             "model.tower.image_size": "32", "model.tower.text_len": "12", "model.tower.vocab": "512",
             "model.image_size": "32", "model.text_adapt_until": "1", "data.synthetic.image_size": "32"},
}


def stage_config(size: str, batch_size: int, mesh: str, text_export: str | None):
  from aajax.train import config as config_lib, stages
  config = config_lib.load_config(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                               "configs", "aa_siglip.py"))
  config_lib.apply_overrides(config, SIZES[size])
  config = stages.stage_config(config, "image" if text_export else "text", {"text": text_export} if text_export else {})
  config.update(batch_size=batch_size, mesh=mesh, fsdp_min_size=0, seed=0)
  return config


def time_step(size: str, devices, mesh_spec: str, batch_size: int, text_export: str, runs: int) -> dict:
  """Compile time and median step time of stage 2 on `devices` laid out by `mesh_spec`."""
  import time
  import jax
  from aajax.anomaly.tasks import AATask
  from aajax.train import loop, sharding
  from aajax.train.mesh import describe, make_mesh, shard_batch
  from benchmarks import harness

  config = stage_config(size, batch_size, mesh_spec, text_export)
  mesh = make_mesh(devices, mesh_spec)
  task = AATask()
  prepared = loop.prepare(task, config, mesh)
  batch = shard_batch(mesh, next(task.train_data(config, None)), batch_size)
  t0 = time.perf_counter()
  step = prepared.train_step(task, config).lower(prepared.state, prepared.frozen, batch).compile()
  compile_s = time.perf_counter() - t0
  holder = {"state": prepared.state}

  def one():
    holder["state"], metrics = step(holder["state"], prepared.frozen, batch)
    jax.block_until_ready(metrics)
  timing = harness.measure(one, runs=runs)
  local, whole = sharding.sharded_bytes((holder["state"]["params"], holder["state"]["opt_state"], prepared.frozen))
  return {"mesh": describe(mesh), "devices": len(devices), "global_batch": batch_size, "compile_s": round(compile_s, 3),
          **timing, "steps_per_s": 1.0 / timing["median_s"], "images_per_s": batch_size / timing["median_s"],
          "state_mib_per_device": round(local / 2**20, 3), "state_mib": round(whole / 2**20, 3)}


def worker(args) -> None:
  """One device count: every setup that uses it. Prints one JSON line."""
  import jax
  from aajax.anomaly.tasks import AATask
  from aajax.train import checkpoint, loop
  from aajax.train.mesh import make_mesh
  n = args.devices[0]
  devices = jax.devices()[:n]
  if len(devices) < n:
    raise SystemExit(f"{n} devices asked for, {len(devices)} available")
  with tempfile.TemporaryDirectory() as tmp:
    # stage 2 starts from a stage-1 export; its initial params do (the step's cost does not depend on them)
    text = stage_config(args.size, 8, "data:-1", None)
    prepared = loop.prepare(AATask(), text, make_mesh(jax.devices()[:1]))
    export = checkpoint.export_params(tmp, prepared.state["params"])
    runs = {"weak": time_step(args.size, devices, "data:-1", args.per_device * n, export, args.runs)}
    if args.global_batch % n == 0:
      runs["strong"] = time_step(args.size, devices, "data:-1", args.global_batch, export, args.runs)
    if n == max(args.all_devices) and n >= 4:
      runs["fsdp_data2"] = time_step(args.size, devices, f"data:2,fsdp:{n // 2}", args.per_device * n, export, args.runs)
      runs["fsdp_all"] = time_step(args.size, devices, f"fsdp:{n}", args.per_device * n, export, args.runs)
  print("RESULT " + json.dumps(runs), flush=True)


def efficiencies(results: dict, cores: int) -> dict:
  """Scaling efficiencies; with fake devices also `weak_vs_<c>dev`: images/s against the run with as
  many devices as there are cores (past it, devices add no compute, so the ratio is the overhead)."""
  base = results.get("1")
  ceiling = results.get(str(cores)) if cores > 1 else None
  out = {}
  for n, runs in results.items():
    k = int(n)
    row = {}
    if base and "weak" in runs:
      row["weak"] = round(runs["weak"]["images_per_s"] / (k * base["weak"]["images_per_s"]), 4)
    if ceiling and k > cores:
      row[f"weak_vs_{cores}dev"] = round(runs["weak"]["images_per_s"] / ceiling["weak"]["images_per_s"], 4)
    if base and "strong" in runs and "strong" in base:
      row["strong"] = round(base["strong"]["median_s"] / (k * runs["strong"]["median_s"]), 4)
    for name in ("fsdp_data2", "fsdp_all"):
      if name in runs:   # against plain data parallelism on the same devices
        row[f"{name}_vs_data"] = round(runs[name]["images_per_s"] / runs["weak"]["images_per_s"], 4)
    out[n] = row
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--size", choices=sorted(SIZES), default="demo")
  p.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4, 8])
  p.add_argument("--per_device", type=int, default=2, help="images per device (weak scaling)")
  p.add_argument("--global_batch", type=int, default=8, help="images per step (strong scaling)")
  p.add_argument("--runs", type=int, default=5)
  p.add_argument("--real", action="store_true", help="use the machine's own devices, not fake CPU ones")
  p.add_argument("--out", default="benchmarks/results/scaling.json")
  p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  p.add_argument("--all_devices", type=int, nargs="+", help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.worker:
    return worker(args)

  from benchmarks import harness
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  results, env = {}, None
  for n in args.devices:
    child_env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if not args.real:
      child_env["XLA_FLAGS"] = (child_env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={n}").strip()
      child_env["JAX_PLATFORMS"] = "cpu"
    cmd = [sys.executable, "-m", "benchmarks.scaling", "--worker", "--size", args.size, "--devices", str(n),
           "--per_device", str(args.per_device), "--global_batch", str(args.global_batch), "--runs", str(args.runs),
           "--all_devices", *map(str, args.devices)]
    proc = subprocess.run(cmd, cwd=root, env=child_env, capture_output=True, text=True)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    if proc.returncode or not lines:
      raise SystemExit(f"{n} devices failed:\n{proc.stderr[-3000:]}")
    results[str(n)] = json.loads(lines[-1][len("RESULT "):])
    weak = results[str(n)]["weak"]
    print(f"{n} device(s): weak {weak['images_per_s']:.2f} img/s ({weak['steps_per_s']:.2f} steps/s, "
          f"compile {weak['compile_s']:.1f} s)" + ("  [contended]" if weak["contended"] else ""), flush=True)
  if env is None:
    env = harness.environment()
    env.pop("devices", None)
  cores = len(os.sched_getaffinity(0))
  doc = {"benchmark": "AA stage-2 train step scaling", "size": args.size, "per_device_batch": args.per_device,
         "strong_global_batch": args.global_batch, "fake_cpu_devices": not args.real,
         "usable_cores": cores, "environment": env, "results": results,
         "efficiency": efficiencies(results, cores if not args.real else 0),
         "note": ("fake CPU devices share the machine's cores: more devices add no compute, so these figures "
                  "measure the overhead of the sharded program over the single-device one, not a speed-up")
         if not args.real else "real devices"}
  for n, row in doc["efficiency"].items():
    print(f"  {n}: " + "  ".join(f"{k} {v:.3f}" for k, v in row.items()))
  harness.write_json(args.out, doc)


if __name__ == "__main__":
  main()
