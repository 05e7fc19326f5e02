"""requirements-gpu.lock: torch's CUDA build and the CUDA packages it pulls, pinned. Both GPU stacks
(`make setup GPU=1`, with STACK=spark35 or spark4) install it in place of their CPU lock's `torch==` line;
every other pin comes from the CPU lock (requirements.lock, requirements-spark4.lock), so one file serves both.

    python scripts/gpu_lock.py check   CI: the lock resolves on the package index, complete, without downloading
                                       the CUDA wheels (several GB); exit 1 naming what is wrong
    python scripts/gpu_lock.py write   re-derive the pins after changing the torch line (or to take new CUDA
                                       patch releases), then review the diff

Why `torch===2.13.0`: `torch==2.13.0` also matches a CPU build `2.13.0+cpu` (a local version) wherever pip sees
one (PyTorch's CPU index, or a find-links folder as on this project's machines), and pip prefers it; `===`
matches the CUDA 13 build's version string, `2.13.0`, only. The CUDA packages are pinned because torch leaves some open (e.g. nvidia-nvjitlink,
cuda-bindings), so an unpinned install would take whatever CUDA patch release is newest on the day.

How it avoids the download: pip needs each wheel's metadata to resolve. Where the index serves it apart
(PEP 658, as pypi.org does) pip fetches only that; the index this project's machines use does not, and pip 24
(bootstrap's) then downloads every wheel (measured: 1.36 GB). pip >= 25 with `--use-feature=fast-deps` reads
the metadata out of the remote wheel with HTTP range requests instead (measured: 5 MB, 4 s). The check runs
that pip in a venv of its own under build/, so the stacks' pip stays as bootstrap pins it.
Linux x86_64 and Python 3.11 only: the pins are for the platform the stacks are tested on.
"""
from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOCK = os.path.join(ROOT, "requirements-gpu.lock")
RESOLVER_VENV = os.path.join(ROOT, "build", "gpu-lock-pip")
RESOLVER_PIP = "pip==26.3"
# The packages torch's CUDA build adds over its CPU build: these are the lock's to pin. torch's other
# dependencies (filelock, sympy, jinja2, ...) are the CPU build's too and stay as the CPU stack has them.
CUDA_FAMILY = re.compile(r"^(nvidia-.*|cuda-.*|triton)$")
HEADER = """\
# torch's CUDA 13 build and the CUDA packages it pulls (Linux x86_64, Python 3.11), for the GPU stacks:
# `make setup GPU=1` (and STACK=spark4 GPU=1) installs this file in place of the CPU lock's torch line.
# `===`: the CUDA build's exact version string (`==2.13.0` also matches a 2.13.0+cpu, which pip prefers).
# Derived by `python scripts/gpu_lock.py write`; CI runs `python scripts/gpu_lock.py check`. Needs an NVIDIA
# driver >= 580 (CUDA 13) on the nodes that run it.
"""


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(path: str = LOCK) -> tuple[str, dict[str, str]]:
    """(the torch line, {package: version} of every other pin)."""
    torch, pins = None, {}
    for line in open(path):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("torch==="):
            torch = line
            continue
        name, sep, version = line.partition("==")
        if not sep or version.startswith("="):
            raise SystemExit(f"{path}: {line!r} is not a `name==version` pin (only torch takes `===`)")
        pins[canonical(name)] = version
    if torch is None:
        raise SystemExit(f"{path}: no `torch===VERSION` line (the CUDA build's exact version)")
    return torch, pins


def resolver() -> str:
    """A pip that can read metadata with range requests (see the module docstring), in its own venv."""
    python = os.path.join(RESOLVER_VENV, "bin", "python")
    wanted = RESOLVER_PIP.split("==")[1]
    have = subprocess.run([python, "-m", "pip", "--version"], capture_output=True, text=True) \
        if os.path.exists(python) else None
    if have is None or have.returncode != 0 or f"pip {wanted} " not in have.stdout:
        subprocess.run([sys.executable, "-m", "venv", "--clear", RESOLVER_VENV], check=True)
        subprocess.run([python, "-m", "pip", "install", "-q", RESOLVER_PIP], check=True)
    return python


def resolve(requirements: list[str]) -> dict[str, str]:
    """What pip would install for `requirements` into an empty environment: {package: version}."""
    python = resolver()
    with tempfile.TemporaryDirectory() as tmp:
        req = os.path.join(tmp, "requirements.txt")
        report = os.path.join(tmp, "report.json")
        with open(req, "w") as f:
            f.write("\n".join(requirements) + "\n")
        done = subprocess.run([python, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                               "--no-cache-dir", "--use-feature=fast-deps", "--report", report, "-r", req],
                              capture_output=True, text=True)
        if done.returncode != 0:
            errors = "\n".join(line for line in done.stderr.splitlines() if "is ignored" not in line)
            raise SystemExit(f"gpu lock: pip could not resolve {LOCK}:\n{errors[-3000:]}")
        items = json.load(open(report))["install"]
    return {canonical(i["metadata"]["name"]): i["metadata"]["version"] for i in items}


def check_platform() -> None:
    if (platform.system(), platform.machine(), sys.version_info[:2]) != ("Linux", "x86_64", (3, 11)):
        raise SystemExit(f"gpu lock: the pins are for Linux x86_64 with Python 3.11 (the markers of torch's "
                         f"CUDA dependencies depend on them); this is {platform.system()} {platform.machine()} "
                         f"with Python {platform.python_version()}. Run it with python3.11 on Linux x86_64")


def problems(torch_line: str, pins: dict[str, str], resolved: dict[str, str]) -> list[str]:
    """What makes the lock wrong, given what pip resolved for it; empty when it is right."""
    out = []
    torch_version = torch_line.split("===", 1)[1]
    if resolved.get("torch") != torch_version:
        out.append(f"torch resolved to {resolved.get('torch')}, not the CUDA build {torch_version}")
    cuda = {name: version for name, version in resolved.items() if CUDA_FAMILY.match(name)}
    for name in sorted(set(cuda) - set(pins)):
        out.append(f"{name}=={cuda[name]} is pulled by torch's CUDA build but not pinned: run "
                   f"`python scripts/gpu_lock.py write`")
    for name in sorted(set(pins) - set(cuda)):
        out.append(f"{name}=={pins[name]} is pinned but not a CUDA package torch needs: run "
                   f"`python scripts/gpu_lock.py write`")
    return out


def main(argv: list[str]) -> int:
    if argv not in (["check"], ["write"]):
        print(__doc__, file=sys.stderr)
        return 2
    check_platform()
    torch_line, pins = read_pins()
    if argv == ["write"]:
        resolved = resolve([torch_line])
        cuda = sorted((n, v) for n, v in resolved.items() if CUDA_FAMILY.match(n))
        with open(LOCK, "w") as f:
            f.write(HEADER + torch_line + "\n" + "".join(f"{n}=={v}\n" for n, v in cuda))
        print(f"gpu lock: wrote {LOCK} ({len(cuda)} CUDA packages beside {torch_line})")
        return 0
    found = problems(torch_line, pins, resolve([torch_line, *(f"{n}=={v}" for n, v in pins.items())]))
    for line in found:
        print(f"gpu lock: {line}", file=sys.stderr)
    if not found:
        print(f"gpu lock: {LOCK} resolves ({torch_line} and {len(pins)} CUDA packages)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
