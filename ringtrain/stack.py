"""Which optional training packages this environment has, and what `auto` means here. Core: imports nothing
of ringtrain's upper layers, and looks packages up without importing them (importlib.util.find_spec), so
loading a config stays cheap.

ringtrain has two pinned stacks (README "Prerequisites"): Spark 3.5 with Horovod and petastorm
(requirements.lock), and Spark 4 with neither (requirements-spark4.lock). The DDP engine and the arrow
reader work on both; `train.engine: auto` and `train.reader: auto` pick Horovod and petastorm where they
are installed, DDP and arrow where they are not.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re

from ringtrain.errors import ConfigError

# Why a package can be missing, and what to use instead: the message of a config that asks for it.
_MISSING = {
    "horovod": ("train.engine", "ddp",
                "Horovod is not installed in this environment. The Spark 4 stack (requirements-spark4.lock) has "
                "none: Horovod's last release, 0.28.1 (2023), must be built from source against torch, and its "
                "Spark extra pins pyarrow < 11 while Spark 4 needs pyarrow >= 15 (the stack pins 18); "
                "scripts/bootstrap.sh builds it for the Spark 3.5 stack only"),
    "petastorm": ("train.reader", "arrow",
                  "petastorm is not installed in this environment. The Spark 4 stack (requirements-spark4.lock) "
                  "has none: petastorm 0.13.1, its last release, needs pyarrow < 15 (it imports "
                  "pyarrow.filesystem, removed in pyarrow 16, and passes ParquetDataset arguments removed in 15), "
                  "while Spark 4 needs pyarrow >= 15 (the stack pins 18)"),
}


def current() -> str:
    """The pinned stack this environment holds, by its pyspark (read from the metadata, not imported):
    `spark4` for pyspark 4.x, `spark35` otherwise. The name scripts/bootstrap.sh takes as STACK."""
    major = int(importlib.metadata.version("pyspark").split(".")[0])
    return "spark4" if major >= 4 else "spark35"


def gpu() -> bool:
    """True where this environment's torch is a CUDA build: the GPU flavour of its stack (`make setup GPU=1`,
    requirements-gpu.lock). Reads `torch.version.cuda` from torch/version.py rather than importing torch."""
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return False
    path = os.path.join(list(spec.submodule_search_locations)[0], "version.py")
    try:
        with open(path) as f:
            found = re.search(r"^cuda\b[^=\n]*=\s*(.+)$", f.read(), re.MULTILINE)
    except OSError:
        return False
    return found is not None and found.group(1).strip() != "None"


def installed(package: str) -> bool:
    """True if `package` can be imported here (found on the path; not imported)."""
    return importlib.util.find_spec(package) is not None


def resolve(requested: str, optional: str) -> str:
    """`requested` as configured for the key that `optional` (horovod or petastorm) serves: `auto` becomes
    `optional` where it is installed, the portable choice where not; asking for it where it is absent
    raises ConfigError naming the key, why, and what to use instead."""
    key, portable, why = _MISSING[optional]
    if requested == "auto":
        return optional if installed(optional) else portable
    if requested == optional and not installed(optional):
        raise ConfigError(f"{key}: {optional!r} cannot run here. {why}. Use {key}: {portable} (it works on both "
                          f"stacks) or {key}: auto (picks {portable} here), or set up the Spark 3.5 stack: "
                          f"make setup STACK=spark35")
    return requested
