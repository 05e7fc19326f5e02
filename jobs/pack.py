"""`ringtrain pack`: the Python environment that executors unpack from `--archives ringtrain-env.tar.gz#env`.

Steps: scripts/bootstrap.sh builds a virtual environment with the pinned stack of the environment that
runs `pack` (Spark 3.5 from .venv, Spark 4 from .venv-spark4: the cluster's Spark line decides; from a GPU
stack, .venv-gpu or .venv-spark4-gpu, its GPU flavour: CUDA torch, and Horovod with NCCL on Spark 3.5), a
separate one (`build/pack-env`, `build/pack-env-spark4`, `build/pack-env-gpu` or `build/pack-env-spark4-gpu`
by default, so the checkout's editable venvs are untouched); ringtrain is installed
into it NON-editable (an editable install points back into this checkout, which executors do not
have, and venv-pack refuses it); venv-pack archives it.

venv-pack 0.2.0 does not pack the interpreter: `bin/python` stays a link to the Python the
environment was made from. Every node must have that same Python at that same path; `pack` says
which, and prints the spark-submit lines that use the archive.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

from ringtrain.errors import PackError
from ringtrain.stack import current as current_stack
from ringtrain.stack import gpu as gpu_stack


# Spark's own jars (about 300 MiB of the pyspark wheel): the cluster's Spark runs the JVMs, and
# Python tasks import pyspark from the PYTHONPATH Spark gives them, so the archive leaves them out.
SPARK_JARS = "lib/python*/site-packages/pyspark/jars/*"
# What no task imports: the packages' own test suites (about 147 MiB on the Spark 3.5 stack)
# and torch's C++ test programs (about 39 MiB). `*` matches across folders, so nested tests/ folders go too.
# The standalone-cluster test runs the ETL and both engines from an archive packed without them.
NOT_IMPORTED = ("lib/python*/site-packages/*/tests/*", "lib/python*/site-packages/torch/bin/test_*",
                "lib/python*/site-packages/torch/bin/*StoreTest")
# gzip level 1: about twice as fast to compress as venv-pack's default 4, for an archive a few percent larger.
COMPRESS_LEVEL = 1


def checkout_root() -> str:
    """The source checkout this ringtrain runs from: pack builds from it."""
    import ringtrain
    root = os.path.dirname(os.path.dirname(os.path.abspath(ringtrain.__file__)))
    if not (os.path.exists(os.path.join(root, "pyproject.toml"))
            and os.path.exists(os.path.join(root, "scripts", "bootstrap.sh"))):
        raise PackError(f"ringtrain is installed from {root}, not from a source checkout: run `ringtrain pack` "
                        f"with the ringtrain of a checkout (git clone, then make setup)")
    return root


def pack(output: str, *, env_dir: str | None = None) -> dict:
    root = checkout_root()
    stack, gpu = current_stack(), gpu_stack()
    flavour = stack + ("-gpu" if gpu else "")
    env_dir = os.path.abspath(env_dir or default_env_dir(root, stack, gpu=gpu))
    output = os.path.abspath(output)
    os.makedirs(os.path.dirname(output), exist_ok=True)  # before the build, not after it
    started = time.time()
    _run(["bash", os.path.join(root, "scripts", "bootstrap.sh")],
         {"RINGTRAIN_VENV": env_dir, "STACK": stack, "GPU": "1" if gpu else "0"},
         f"scripts/bootstrap.sh could not build the environment ({flavour} stack)")
    python = os.path.join(env_dir, "bin", "python")
    # Non-editable, replacing the editable install bootstrap made; dependencies are already pinned there.
    _run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--force-reinstall", root], {},
         "installing ringtrain non-editable into the environment failed")
    built_s = time.time() - started
    import venv_pack
    try:
        venv_pack.pack(prefix=env_dir, output=output, force=True, compress_level=COMPRESS_LEVEL,
                       filters=[("exclude", pattern) for pattern in (SPARK_JARS, *NOT_IMPORTED)])
    except venv_pack.VenvPackException as exc:
        raise PackError(f"venv-pack refused {env_dir}: {exc}") from None
    return {"archive": output, "bytes": os.path.getsize(output), "env_dir": env_dir, "stack": stack, "gpu": gpu,
            "python": python, "interpreter": interpreter(env_dir), "build_s": round(built_s, 1),
            "pack_s": round(time.time() - started - built_s, 1)}


def default_env_dir(root: str, stack: str, *, gpu: bool = False) -> str:
    """One folder per stack and flavour, so packing for another Spark line, or CPU after GPU, never installs
    over this one's packages."""
    name = "pack-env" + ("" if stack == "spark35" else f"-{stack}") + ("-gpu" if gpu else "")
    return os.path.join(root, "build", name)


def _run(cmd: list[str], env: dict, failure: str) -> None:
    # Outside the checkout: bootstrap's up-to-date check imports ringtrain.training, which the checkout's
    # own ringtrain/ folder (first on sys.path from the current directory) would shadow and fail.
    done = subprocess.run(cmd, env={**os.environ, **env}, cwd="/", stdout=sys.stderr, stderr=sys.stderr)
    if done.returncode != 0:
        raise PackError(f"{failure} (exit {done.returncode}, output above)")


def interpreter(env_dir: str) -> dict:
    """The Python that `bin/python` of the archive will run on the nodes (not inside the archive)."""
    version = subprocess.run([os.path.join(env_dir, "bin", "python"), "-c",
                              "import platform; print(platform.python_version())"],
                             capture_output=True, text=True, check=True).stdout.strip()
    return {"path": os.path.realpath(os.path.join(env_dir, "bin", "python")), "version": version}


def submit_lines(archive: str, driver_python: str, config: str = "conf/yarn.yaml") -> str:
    """spark-submit lines for YARN, client and cluster mode, for the ETL and the training job."""
    name = os.path.basename(archive)
    ship = f"  --archives {archive}#env \\\n  --conf spark.pyspark.python=./env/bin/python \\\n"
    client = ("spark-submit --master yarn --deploy-mode client \\\n" + ship
              + f"  --conf spark.pyspark.driver.python={driver_python} \\\n")
    # The driver runs in YARN's application master: it unpacks the same archive, and the config file
    # travels with --files into its working folder.
    cluster = ("spark-submit --master yarn --deploy-mode cluster \\\n" + ship
               + "  --conf spark.yarn.appMasterEnv.PYSPARK_PYTHON=./env/bin/python \\\n"
               + f"  --files {config} \\\n")
    train = "  --num-executors N --executor-cores 1 --conf spark.dynamicAllocation.enabled=false \\\n"
    base = os.path.basename(config)
    return "\n".join([
        f"# client mode (the driver runs here, on {driver_python}):",
        client + f"  jobs/etl_job.py --config {config} [--partition VALUE]",
        client + train + f"  jobs/train_job.py --config {config}",
        f"# cluster mode (the driver runs on a node, from {name}):",
        cluster + f"  jobs/etl_job.py --config {base} [--partition VALUE]",
        cluster + train + f"  jobs/train_job.py --config {base}",
        "# N = train.num_workers. Check the set-up first, with the same flags (seconds; exit 0, or 2 with fixes):",
        f"#   spark-submit ... jobs/doctor_job.py --config {config}",
    ])


def format_report(summary: dict) -> str:
    mib = summary["bytes"] / 2**20
    it = summary["interpreter"]
    return "\n".join([
        f"PACK      {summary['archive']} ({mib:,.0f} MiB), {summary['stack']}{'-gpu' if summary['gpu'] else ''} "
        f"stack in {summary['env_dir']}",
        f"          built in {summary['build_s']}s, packed in {summary['pack_s']}s",
        f"CAVEAT    venv-pack does not put the interpreter in the archive: env/bin/python links to {it['path']}",
        f"          (Python {it['version']}). Every node (YARN NodeManagers, and the driver's host in cluster mode)",
        "          needs that Python at that path, same OS and architecture; otherwise use conda-pack.",
        "",
        submit_lines(summary["archive"], summary["python"]),
        *([] if not summary["gpu"] else [
            "# GPUs (README \"5. GPUs\"): add to each line --conf spark.executor.resource.gpu.amount=G "
            "--conf spark.task.resource.gpu.amount=G",
            "#   --files conf/gpu_discovery.sh --conf spark.executor.resource.gpu.discoveryScript=./gpu_discovery.sh "
            "and --set train.gpus_per_worker=G; the nodes need an NVIDIA driver >= 580 (CUDA 13)"]),
    ])
