"""Config files, command-line overrides and per-stage configs."""
import ml_collections
import pytest

from aajax.errors import ConfigError
from aajax.train import config as config_lib, stages, tasks
from tests.train.helpers import TOY, run_launch


def test_load_config_with_arg():
  assert config_lib.load_config(TOY).stages == ("first",)
  assert config_lib.load_config(TOY + ":two_stage").stages == ("first", "second")


def test_overrides_are_typed():
  c = config_lib.load_config(TOY)
  config_lib.apply_overrides(c, ["lr=0.5", "steps=7", "ckpt_async=false", "milestones=10,20", "freeze=head/,hidden/",
                                 "schedule=multistep", "stage_second.lr=1e-4"])
  assert (c.lr, c.steps, c.ckpt_async, c.milestones) == (0.5, 7, False, (10, 20))
  assert c.freeze == ("head/", "hidden/") and c.schedule == "multistep" and c.stage_second.lr == 1e-4


@pytest.mark.parametrize("override,words", [
    ("lrr=1", ["'lrr'", "lr"]),
    ("stage_second.lrr=1", ["'stage_second.lrr'"]),
    ("stage_third.lr=1", ["'stage_third'"]),
    ("steps=many", ["'steps'", "int"]),
    ("lr", ["key=value"]),
])
def test_bad_override_names_the_key(override, words):
  with pytest.raises(ConfigError) as e:
    config_lib.apply_overrides(config_lib.load_config(TOY), [override])
  for w in words:
    assert w in str(e.value)


def test_missing_config_file():
  with pytest.raises(ConfigError, match="not found"):
    config_lib.load_config("nope/missing.py")


def test_stage_config_merges_section_over_shared():
  c = config_lib.load_config(TOY + ":two_stage")
  first = stages.stage_config(c, "first")
  second = stages.stage_config(c, "second", {"first": "/x/first/export"})
  assert first.lr == c.lr and first.steps == c.steps and first.stage == "first"
  assert (second.lr, second.steps, second.stage) == (3e-3, 30, "second")
  assert second.exports.first == "/x/first/export" and "stage_second" not in second


def test_unknown_task_and_stage():
  with pytest.raises(ConfigError, match="unknown task 'nope'"):
    tasks.get("nope")
  c = config_lib.load_config(TOY)
  c.stages = ("third",)
  with pytest.raises(ConfigError, match="unknown stage 'third'"):
    stages.run(c, "/tmp/unused")


def test_with_defaults_fills_missing_fields():
  c = config_lib.with_defaults(ml_collections.ConfigDict({"task": "toy", "lr": 0.1}))
  assert c.lr == 0.1 and c.keep == config_lib.train_defaults().keep


def test_launch_unknown_key_exits_2(tmp_path):
  proc = run_launch(tmp_path, "--config.bach_size=4", timeout=60)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "unknown config key 'bach_size'" in proc.stderr and "batch_size" in proc.stderr
  assert "Traceback" not in proc.stderr


def test_config_file_arguments():
  from aajax.train.config import parse_config_arg
  defaults = {"size": "demo", "data": "synthetic", "eval": ""}
  assert parse_config_arg(None, defaults) == defaults
  assert parse_config_arg("so400m,data=visa", defaults) == {"size": "so400m", "data": "visa", "eval": ""}
  assert parse_config_arg("bug_compat,eval=mvtec", {"eval": ""}, switches=("bug_compat", "x")) == {
      "eval": "mvtec", "bug_compat": True, "x": False}
  for bad, message in (("dtaa=visa", "dtaa=visa"), ("size=big", "size=big"), ("so400m,typo", None)):
    with pytest.raises(ConfigError, match="unknown argument") as e:
      parse_config_arg(bad, {"eval": ""} if message is None else defaults, switches=("x",) if message is None else ())
    assert "accepted:" in str(e.value)
