"""Both captioners through the trainer on the synthetic captions: loss falls, held-out accuracy rises,
only the trainable params reach the optimizer, LoRA export (merged) equals the trained model, and
KV-cache generation agrees with teacher forcing."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

from aajax.captioning.tasks import CaptionerTask
from aajax.model_dir import load_params
from aajax.nn import lora as lora_lib
from aajax.train import loop, optim
from aajax.train.mesh import make_mesh
from tests.prefix_vlm.helpers import tiny_config
from tests.train.helpers import ROOT, subprocess_env


def logged(workdir, split="train"):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [r for r in map(json.loads, f) if r["split"] == split]


def test_prefix_vlm_learns_and_exports_merged(tmp_path):
  config = tiny_config("prefix")
  task = CaptionerTask()
  result = loop.train(task, config, str(tmp_path), mesh=make_mesh(jax.devices()[:1]))
  train = logged(str(tmp_path))
  after = result.eval_metrics
  # the same model at its initial params (the loop's init rng), through the already compiled evaluation
  frozen0, trainable0 = CaptionerTask().init(jax.random.split(jax.random.key(config.seed))[0], config)
  before = task.evaluate(trainable0, frozen0, config)
  print("untrained", before, "trained", after, "train loss", train[0]["loss"], "->", train[-1]["loss"])
  assert train[-1]["loss"] < 0.6 * train[0]["loss"]
  assert after["token_acc"] > before["token_acc"] + 0.3 and after["word_acc"] > before["word_acc"] + 0.2
  assert after["loss"] < before["loss"]

  # the vision tower and decoder are frozen: the trainable tree is the projection and the adapters
  trainable, frozen = jax.device_get(result.trainable), jax.device_get(result.frozen)
  assert set(trainable) == {"projection", "lora"} and set(frozen) == {"vision", "decoder"}
  n_trainable = lora_lib.count(trainable)
  assert n_trainable < 0.2 * (n_trainable + lora_lib.count(frozen))
  assert optim.state_size(task.optimizer(config).init(trainable)) == 2 * n_trainable   # Adam mu, nu only

  # the exported model has LoRA merged into the decoder and gives the trained model's logits
  exported = load_params(os.path.join(str(tmp_path), "model"))
  assert set(exported) == {"vision", "projection", "decoder"}
  batch = next(task.train_data(config, None))
  with jax.default_matmul_precision("highest"):
    unmerged = task.model.caption_logits({**frozen, **trainable}, batch["images"], batch["tokens"])
    merged = task.model.caption_logits(exported, batch["images"], batch["tokens"])
    # greedy KV-cache generation == argmax of teacher forcing on its own output
    generated = task.model.generate({**frozen, **trainable}, batch["images"], 8, task.tokenizer.bos_id)
    bos = jnp.full((generated.shape[0], 1), task.tokenizer.bos_id, jnp.int32)
    forced = task.model.caption_logits({**frozen, **trainable}, batch["images"], jnp.concatenate([bos, generated], 1))
  np.testing.assert_allclose(np.asarray(merged), np.asarray(unmerged), rtol=1e-4, atol=1e-4)
  np.testing.assert_array_equal(np.asarray(jnp.argmax(forced[:, :-1], -1)), np.asarray(generated))


def test_projection_and_lora_learning_rates_are_separate():
  config = tiny_config("prefix", lora_lr=0.0, projection_lr=1e-2)
  task = CaptionerTask()
  frozen, trainable = task.init(jax.random.key(0), config)
  trainable["lora"] = jax.tree.map(lambda x: x + 0.01, trainable["lora"])   # B != 0: LoRA A gets gradients
  batch = next(task.train_data(config, None))
  grads = jax.grad(lambda t: task.loss_fn(t, frozen, batch, None)[0])(trainable)
  assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads))
  tx = task.optimizer(config)
  updates, _ = tx.update(grads, tx.init(trainable), trainable)
  moved = optax.apply_updates(trainable, updates)
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(moved["lora"]), jax.tree.leaves(trainable["lora"])))
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(moved["projection"]),
                                                       jax.tree.leaves(trainable["projection"])))


def test_xattn_baseline_trains_from_launch_train(tmp_path):
  cmd = [sys.executable, "-c",
         "import sys, runpy; sys.argv = sys.argv[1:]; runpy.run_module('launch.train', run_name='__main__')",
         "launch.train", "--config=configs/prefix_vlm.py:xattn", f"--workdir={tmp_path}",
         "--config.steps=40", "--config.log_every=10", "--config.batch_size=16", "--config.eval.batch_size=36",
         "--config.data.n_per_class=12", "--config.data.classes=brick,grass,coffee", "--config.data.max_len=14",
         "--config.eval.max_new=12", "--config.accum=2", "--config.model.vision.depth=1", "--config.model.vision.width=32",
         "--config.model.vision.patch=16", "--config.model.text.dim=32", "--config.model.text.n_layers=2",
         "--config.model.text.ff_dim=64", "--config.model.text.rotary_dim=4", "--config.lr=3e-3"]
  proc = subprocess.run(cmd, cwd=ROOT, env=subprocess_env(devices=2), capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  workdir = os.path.join(str(tmp_path), "captions")
  train = logged(workdir)
  assert train[-1]["loss"] < 0.6 * train[0]["loss"]
  evals = logged(workdir, "eval")
  assert evals[-1]["token_acc"] > 0.4, evals
  assert os.path.isfile(os.path.join(workdir, "model", "tokenizer.json"))
