"""The launch programs: importable side by side (library code and tests import them), and each still
defines its flags when run."""
import subprocess
import sys

import pytest

ABSL_PROGRAMS = {"train": "--workdir", "eval": "--data", "infer": "--images", "report": "--outdir",
                 "diagnose": "--thresholds"}   # a flag each program's --help must list
ALL_PROGRAMS = (*ABSL_PROGRAMS, "serve", "embed")


def test_launch_modules_import_together():
  code = "; ".join(f"import launch.{name}" for name in ALL_PROGRAMS)
  done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize("name", sorted(ABSL_PROGRAMS))
def test_program_lists_its_flags(name):
  done = subprocess.run([sys.executable, "-m", f"launch.{name}", "--help"], capture_output=True, text=True,
                        timeout=300)
  assert done.returncode in (0, 1), done.stderr[-2000:]   # absl's --help exits 1
  assert f"{ABSL_PROGRAMS[name]}: " in done.stdout, done.stdout[-2000:]   # the flag's own help line


def test_library_does_not_import_launch():
  import pathlib
  root = pathlib.Path(__file__).resolve().parents[1] / "aajax"
  offenders = [str(p.relative_to(root.parent)) for p in root.rglob("*.py")
               if "from launch" in p.read_text() or "import launch" in p.read_text()]
  assert offenders == []
