"""`ringtrain pack`: the Python environment that executors unpack from `--archives ringtrain-env.tar.gz#env`.

Steps: a copy of the environment that runs `pack` (its interpreter's venv: Spark 3.5 from .venv, Spark 4
from .venv-spark4, or a GPU flavour, .venv-gpu or .venv-spark4-gpu; the cluster's Spark line decides) is
made in a separate folder (`build/pack-env`, `build/pack-env-spark4`, `build/pack-env-gpu` or
`build/pack-env-spark4-gpu` by default, so the checkout's editable venvs are untouched), without
ringtrain's own test tools (pytest, moto, venv-pack and what only they need); its files are hard links
to the running environment's where the filesystem allows, so the copy takes seconds. ringtrain is
installed into it NON-editable (an editable install points back into this checkout, which executors do
not have, and venv-pack refuses it); venv-pack archives it. The executors so run the very packages the
driver was tested with.

venv-pack 0.2.0 does not pack the interpreter: `bin/python` stays a link to the Python the
environment was made from. Every node must have that same Python at that same path; `pack` says
which, and prints the spark-submit lines that use the archive.
"""
from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import sysconfig
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
# ringtrain's own test tools (requirements.lock pins them beside the stack, for `make test`): no task or
# driver imports them. Left out with what only they need (moto's server alone brings botocore, cfn-lint and
# about 30 more: about 130 MiB unpacked); a package that anything kept needs stays.
TEST_TOOLS = ("pytest", "pytest-timeout", "pytest-xdist", "moto[server]", "venv-pack")
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
    env_dir = os.path.abspath(env_dir or default_env_dir(root, stack, gpu=gpu))
    output = os.path.abspath(output)
    os.makedirs(os.path.dirname(output), exist_ok=True)  # before the build, not after it
    started = time.time()
    left_out = copy_environment(env_dir)
    python = os.path.join(env_dir, "bin", "python")
    # Non-editable, replacing the editable install that was copied; its dependencies are there already.
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
            "python": python, "interpreter": interpreter(env_dir), "left_out": left_out,
            "build_s": round(built_s, 1), "pack_s": round(time.time() - started - built_s, 1)}


def _name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def only_for_test_tools(dists: dict) -> list[str]:
    """The installed distributions that only ringtrain's test tools need: the closure of TEST_TOOLS (with the
    extras they name) less the closure of everything else installed. `dists` maps normalized names to
    importlib.metadata distributions."""
    try:
        from packaging.requirements import Requirement
    except ImportError:  # an environment without `packaging` still has pip's copy
        from pip._vendor.packaging.requirements import Requirement

    def closure(roots: list[tuple[str, frozenset]]) -> set[str]:
        seen: dict[str, frozenset] = {}
        todo = [(n, e) for n, e in roots if n in dists]
        while todo:
            name, extras = todo.pop()
            if name in seen and extras <= seen[name]:
                continue
            seen[name] = extras = seen.get(name, frozenset()) | extras
            for text in dists[name].requires or []:
                req = Requirement(text)
                if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in ("", *extras)):
                    if _name(req.name) in dists:
                        todo.append((_name(req.name), frozenset(req.extras)))
        return set(seen)

    tools = closure([(_name(r.name), frozenset(r.extras)) for r in map(Requirement, TEST_TOOLS)])
    return sorted(tools - closure([(n, frozenset()) for n in dists if n not in tools]))


def copy_environment(env_dir: str) -> list[str]:
    """A new venv at `env_dir` on the running environment's interpreter, holding a copy of its site-packages
    and scripts (hard links where the filesystem allows), less the distributions only the test tools need.
    Returns their names."""
    if sys.prefix == sys.base_prefix:
        raise PackError(f"ringtrain runs from {sys.prefix}, not from a virtual environment: run `ringtrain pack` "
                        f"from the environment you submit with, e.g. .venv/bin/ringtrain pack (make setup makes it)")
    if os.path.exists(env_dir):
        if not os.path.exists(os.path.join(env_dir, "pyvenv.cfg")) and os.listdir(env_dir):
            raise PackError(f"{env_dir} exists and is not a virtual environment: pack replaces its --env-dir, so "
                            f"give one that does not exist or that an earlier pack made")
        shutil.rmtree(env_dir)
    _run([sys._base_executable, "-m", "venv", "--without-pip", env_dir], {},
         f"could not create a virtual environment at {env_dir}")
    site = sysconfig.get_paths()["purelib"]
    new_site = os.path.join(env_dir, os.path.relpath(site, sys.prefix))
    dists = {_name(d.metadata["Name"]): d for d in importlib.metadata.distributions(path=[site])}
    left_out = only_for_test_tools(dists)
    skip = {os.path.normpath(os.path.join(site, str(f))) for n in left_out for f in dists[n].files or []}
    # Their top-level folders (packages, .dist-info) go whole when every file in them goes.
    for top in {os.path.join(site, f.parts[0]) for n in left_out for f in dists[n].files or [] if f.parts[0] != ".."}:
        if os.path.isdir(top) and all(os.path.join(d, f) in skip for d, _, fs in os.walk(top) for f in fs):
            skip.add(top)

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:  # another filesystem, or one without hard links
            shutil.copy2(src, dst)

    shutil.rmtree(new_site)
    shutil.copytree(site, new_site, symlinks=True, copy_function=link,
                    ignore=lambda folder, names: [n for n in names if os.path.join(folder, n) in skip])
    # Scripts (bin/): the interpreter, pip's and the venv's own are the new venv's; shebangs name the new one.
    bin_dir, new_bin = os.path.join(sys.prefix, "bin"), os.path.join(env_dir, "bin")
    shebang = f"#!{os.path.join(sys.prefix, 'bin', 'python')}".encode()
    for name in sorted(os.listdir(bin_dir)):
        src, dst = os.path.join(bin_dir, name), os.path.join(new_bin, name)
        if (os.path.lexists(dst) or name.startswith(("python", "activate", "Activate")) or src in skip
                or not os.path.isfile(src)):
            continue
        with open(src, "rb") as f:
            head = f.read(len(shebang))
            if head != shebang:
                link(src, dst)
                continue
            body = f.read()
        with open(dst, "wb") as f:
            f.write(b"#!" + os.path.join(env_dir, "bin", "python").encode() + body)
        shutil.copymode(src, dst)
    return left_out


def default_env_dir(root: str, stack: str, *, gpu: bool = False) -> str:
    """One folder per stack and flavour, so packing for another Spark line, or CPU after GPU, never installs
    over this one's packages."""
    name = "pack-env" + ("" if stack == "spark35" else f"-{stack}") + ("-gpu" if gpu else "")
    return os.path.join(root, "build", name)


def _run(cmd: list[str], env: dict, failure: str) -> None:
    # Outside the checkout, whose folders (first on sys.path from the current directory) would shadow packages.
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
        *([f"LEFT OUT  ringtrain's test tools and what only they need ({len(summary['left_out'])} packages): "
           + ", ".join(summary["left_out"])] if summary.get("left_out") else []),
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
