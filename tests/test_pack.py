"""`ringtrain pack`'s pure parts: which environment folder a stack and flavour pack from, and how the flavour is
read (the packing itself runs in tests/test_cluster.py)."""
import sys

import pytest

from ringtrain import stack
from ringtrain.jobs.pack import default_env_dir, format_report


@pytest.mark.parametrize("name, gpu, folder", [
    ("spark35", False, "/src/build/pack-env"),
    ("spark4", False, "/src/build/pack-env-spark4"),
    ("spark35", True, "/src/build/pack-env-gpu"),
    ("spark4", True, "/src/build/pack-env-spark4-gpu"),
])
def test_each_stack_and_flavour_packs_from_its_own_folder(name, gpu, folder):
    assert default_env_dir("/src", name, gpu=gpu) == folder


def test_the_gpu_flavour_is_torch_cuda_read_without_importing_torch():
    import torch
    assert stack.gpu() == (torch.version.cuda is not None)


@pytest.mark.parametrize("line, gpu", [("cuda: Optional[str] = None", False), ("cuda: Optional[str] = '13.0'", True),
                                       ("cuda = '12.8'", True)])
def test_gpu_reads_the_cuda_line_of_torch_version(tmp_path, monkeypatch, line, gpu):
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text("")
    (tmp_path / "torch" / "version.py").write_text(f"__version__ = '2.13.0'\n{line}\nhip = None\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "torch", raising=False)  # find_spec would answer from an imported torch
    assert stack.gpu() is gpu


def test_a_gpu_pack_report_says_how_to_ask_for_gpus():
    summary = {"archive": "/x/env.tar.gz", "bytes": 2**30, "env_dir": "/src/build/pack-env-gpu", "stack": "spark35",
               "gpu": True, "python": "/src/build/pack-env-gpu/bin/python", "build_s": 1.0, "pack_s": 2.0,
               "interpreter": {"path": "/usr/bin/python3.11", "version": "3.11.7"}}
    text = format_report(summary)
    assert "spark35-gpu stack in /src/build/pack-env-gpu" in text
    assert "--conf spark.task.resource.gpu.amount=G" in text and "driver >= 580" in text
    assert "gpu.amount" not in format_report({**summary, "gpu": False})
