"""Generic data-parallel training: task interface (task, tasks), mesh and sharded steps (mesh, step),
optimizers and freezing (optim), orbax checkpoints and exports (checkpoint), the loop (loop),
configs (config) and multi-stage runs (stages). See docs/train.md."""
