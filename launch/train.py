"""Train a task, all its stages or one: `python -m launch.train --config=<file.py[:arg]> --workdir=<dir>`.

    python -m launch.train --config=aajax/train/toy.py --workdir=/tmp/toy --config.steps=200
    python -m launch.train --config=configs/aa_siglip.py:so400m --workdir=runs/aa --stage=image

Any config field can be overridden with --config.<key>=<value> (stage sections too:
--config.stage_image.lr=1e-4). Running the same command again resumes from the last checkpoint.
Multi-host: in Slurm job steps the JAX runtime finds its peers itself; on a Cloud TPU VM pod slice
pass --distributed (or AAJAX_DISTRIBUTED=1); elsewhere pass --coordinator_address=host:port
--num_processes=N --process_id=I (or the JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID
variables) to every process. launch/slurm/aa_gpu.sbatch and launch/tpu/aa_pod.sh do this for you.
--profile writes a JAX profiler trace (TensorBoard / XProf) of a few steps into <workdir>/<stage>/profile.
"""
import os
import sys

from absl import app, flags, logging

from aajax.errors import AajaxError

FLAGS = flags.FLAGS
PROFILE_STEPS = 5   # steps a --profile trace covers unless config.profile_steps says otherwise


def define_flags():
  """The command line flags; defined when run as a program, so launch modules import side by side."""
  flags.DEFINE_string("config", None, "config file with get_config(arg), as path.py or path.py:arg")
  flags.DEFINE_string("workdir", None, "directory for checkpoints, metrics.jsonl, exports (one subdir per stage)")
  flags.DEFINE_string("stage", None, "train only this stage (earlier stages must have finished)")
  flags.DEFINE_string("coordinator_address", None, "multi-process: host:port of process 0")
  flags.DEFINE_integer("num_processes", None, "multi-process: number of processes")
  flags.DEFINE_integer("process_id", None, "multi-process: index of this process")
  flags.DEFINE_bool("distributed", False, "multi-process: let JAX detect the cluster (Cloud TPU VM pod slices)")
  flags.DEFINE_bool("profile", False, "write a JAX profiler trace of config.profile_steps steps (default "
                    f"{PROFILE_STEPS}) after the first into <workdir>/<stage>/profile/process_<i>")
  flags.DEFINE_string("compilation_cache", os.path.expanduser("~/.cache/aajax/jax"),
                      "persistent XLA compilation cache directory ('' = off)")
  flags.mark_flags_as_required(["config", "workdir"])


_OVERRIDES: list[str] = []


def _parse(argv):
  from aajax.train.config import split_argv
  try:
    rest, overrides = split_argv(argv)
  except AajaxError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  _OVERRIDES.extend(overrides)
  try:
    return FLAGS(rest)
  except flags.Error as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


def main(argv):
  del argv
  if not FLAGS["verbosity"].present:   # orbax logs every save at INFO
    logging.set_verbosity(logging.WARNING)
  import jax
  from aajax.train import config as config_lib, mesh, stages
  try:
    mesh.maybe_initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
                                      auto=FLAGS.distributed)
    if FLAGS.compilation_cache and not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
      jax.config.update("jax_compilation_cache_dir", FLAGS.compilation_cache)
    if jax.config.jax_compilation_cache_dir:   # small programs too: a restarted run recompiles nothing
      jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    config = config_lib.load_config(FLAGS.config)
    config_lib.apply_overrides(config, _OVERRIDES)
    if FLAGS.profile and not int(config.get("profile_steps", 0)):
      config.profile_steps = PROFILE_STEPS
    results = stages.run(config, FLAGS.workdir, only=FLAGS.stage)
  except AajaxError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  if jax.process_index() == 0:
    for name, result in results.items():
      status = "interrupted" if result.interrupted else "finished"
      print(f"stage {name}: {status} at step {result.step}; eval {result.eval_metrics}", flush=True)


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=_parse)
