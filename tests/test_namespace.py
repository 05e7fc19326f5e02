"""One installed name, and a core that imports nothing above it."""
import glob
import json
import os
import subprocess
import sys
import zipfile

import pytest

from conftest import ROOT

# Every module of the core folder, ringtrain/ (tests/test_imports.py checks what each may import).
CORE = sorted(f"ringtrain.{n[:-3]}" for n in os.listdir(os.path.join(ROOT, "ringtrain"))
              if n.endswith(".py") and n != "__init__.py")
SPARK_SESSION = "ringtrain.spark"  # the one core module that imports pyspark: it builds the Spark session


def _modules_after(code: str) -> set:
    """The modules a fresh interpreter has loaded after `code`, run outside the checkout."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], cwd="/", capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return set(json.loads(out.stdout.splitlines()[-1]))


def _heavy(modules: set) -> set:
    return {m for m in modules if m.split(".")[0] in ("torch", "pyspark", "horovod", "petastorm")
            or m.startswith(("ringtrain.etl", "ringtrain.training"))}


def test_the_core_imports_neither_etl_nor_training_nor_torch_nor_spark():
    without_spark = [m for m in CORE if m != SPARK_SESSION]
    assert {"ringtrain.config", "ringtrain.store", "ringtrain.manifest", "ringtrain.errors"} <= set(without_spark)
    loaded = _modules_after("\n".join(f"import {m}" for m in without_spark))
    assert set(without_spark) <= loaded
    assert _heavy(loaded) == set()
    with_spark = _modules_after(f"import {SPARK_SESSION}")
    assert {m for m in _heavy(with_spark) if not m.startswith("pyspark")} == set()


def test_cli_help_imports_neither_torch_nor_pyspark():
    loaded = _modules_after("import sys\nfrom ringtrain.jobs.cli import main\n"
                            "try:\n    main(['--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n")
    assert "ringtrain.jobs.cli" in loaded
    assert _heavy(loaded) == set()


# What the Spark side of a training loads, on the driver and in each barrier task: the worker, in its own
# process, is the only one that runs torch.
SPARK_SIDE = {"ringtrain.training.task", "ringtrain.training.rendezvous", "ringtrain.training.environment",
              "ringtrain.training.failure", "ringtrain.training.spec"}


@pytest.mark.parametrize("module, expected", [
    ("ringtrain.training.launcher", SPARK_SIDE | {"ringtrain.training.launcher"}),
    ("ringtrain.training.task", SPARK_SIDE)])
def test_the_spark_launcher_loads_no_training_code(module, expected):
    """The driver imports the launcher to start a training, and each barrier task the task module to start its
    worker: neither runs torch, so neither loads it (nor Horovod, whose rendezvous server loads when it starts)."""
    loaded = _modules_after(f"import {module}")
    assert {m for m in loaded if m.split(".")[0] in ("torch", "horovod", "petastorm")} == set()
    assert {m for m in loaded if m.startswith("ringtrain.training.")} == expected


@pytest.mark.slow
def test_the_wheel_installs_one_top_level_package_and_no_etl_or_jobs(tmp_path):
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(tmp_path / "dist"), ROOT], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    (wheel,) = glob.glob(str(tmp_path / "dist" / "ringtrain-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert tops == {"ringtrain"}
    assert {"ringtrain/etl/pipeline.py", "ringtrain/training/worker.py", "ringtrain/jobs/cli.py"} <= set(names)

    # Installed on its own (the venv's site-packages supply its dependencies), from outside the checkout:
    target = tmp_path / "site"
    out = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                          wheel], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    # -I: isolated mode, so neither the checkout nor the editable install's finder is on the path.
    site = subprocess.run([sys.executable, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True).stdout.strip()
    env = {"PATH": os.environ.get("PATH", "")}
    boot = (f"import sys; sys.path[:0] = [{str(target)!r}, {site!r}];"
            " sys.meta_path[:] = [f for f in sys.meta_path if 'Editable' not in type(f).__name__"
            " and 'Editable' not in getattr(f, '__name__', '')];")
    ok = subprocess.run([sys.executable, "-I", "-S", "-c", boot + " import ringtrain.etl.pipeline, ringtrain.training.worker, ringtrain.jobs.cli;"
                         " print(ringtrain.etl.__file__)"], cwd=str(tmp_path), env=env, capture_output=True, text=True,
                        timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip().startswith(str(target))
    for top in ("etl", "jobs"):
        bad = subprocess.run([sys.executable, "-I", "-S", "-c", boot + f" import {top}"], cwd=str(tmp_path), env=env,
                             capture_output=True, text=True, timeout=120)
        assert bad.returncode != 0 and f"No module named '{top}'" in bad.stderr
