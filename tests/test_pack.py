"""`ringtrain pack`: which environment folder a stack and flavour pack from, how the flavour is read, which
distributions are left out, and the copy of the running environment (real files; the packing and the
archive on a cluster run in tests/test_cluster.py)."""
import os
import subprocess
import sys
import sysconfig

import pytest

from ringtrain import stack
from ringtrain.errors import PackError
from ringtrain.jobs.pack import _name, copy_environment, default_env_dir, format_report, only_for_test_tools


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


class FakeDist:
    def __init__(self, *requires: str):
        self.requires = list(requires)


def test_only_what_the_test_tools_alone_need_is_left_out():
    dists = {
        "ringtrain": FakeDist("torch", "pyyaml", 'pytest==8.3.4; extra == "test"'),
        "torch": FakeDist("jinja2"),
        "pyyaml": FakeDist(),
        "jinja2": FakeDist(),
        "pytest": FakeDist("pluggy", 'pygments; extra == "dev"'),
        "pluggy": FakeDist(),
        "pygments": FakeDist(),  # only pytest's "dev" extra names it, which TEST_TOOLS do not ask for: it stays
        "moto": FakeDist("jinja2", "botocore", 'flask; extra == "server"', 'docker; extra == "all"'),
        "botocore": FakeDist("jmespath"),
        "jmespath": FakeDist(),
        "flask": FakeDist("jinja2"),  # moto[server] brings it
        "docker": FakeDist(),  # moto[all] would; nothing else needs it, but it is not the test tools' either
        "pytest-timeout": FakeDist("pytest"),
        "mypkg": FakeDist("pygments"),  # the user's own: it and what it needs stay
    }
    assert only_for_test_tools(dists) == ["botocore", "flask", "jmespath", "moto", "pluggy", "pytest", "pytest-timeout"]
    dists["torch"].requires.append("botocore")  # now something kept needs it
    assert only_for_test_tools(dists) == ["flask", "moto", "pluggy", "pytest", "pytest-timeout"]


def test_the_copy_is_the_running_environment_without_the_test_tools(tmp_path):
    env = str(tmp_path / "env")
    left_out = copy_environment(env)
    assert {"pytest", "moto", "venv-pack", "botocore"} <= set(left_out)
    assert not {"torch", "pyarrow", "pyspark", "pip", "numpy", "pyyaml"} & set(left_out)
    site = os.path.join(env, os.path.relpath(sysconfig.get_paths()["purelib"], sys.prefix))
    names = set(os.listdir(site))
    assert {"torch", "pyarrow", "pyspark", "yaml", "pip"} <= names and not {"pytest", "moto", "botocore"} & names
    assert not [n for n in names if n.lower().startswith(("pytest", "moto-", "venv_pack"))]
    # The copy shares the running environment's files where the filesystem allows (same inode): seconds.
    here = os.path.join(sysconfig.get_paths()["purelib"], "torch", "__init__.py")
    if os.stat(here).st_dev == os.stat(site).st_dev:
        assert os.path.samefile(here, os.path.join(site, "torch", "__init__.py"))
    # Its scripts run its own interpreter; the test tools' are gone.
    scripts = os.listdir(os.path.join(env, "bin"))
    assert "pytest" not in scripts and "moto_server" not in scripts
    with open(os.path.join(env, "bin", "pip")) as f:
        assert f.readline() == f"#!{env}/bin/python\n"
    done = subprocess.run([os.path.join(env, "bin", "python"), "-c", "import sys, torch, pyarrow, yaml; "
                           "print(sys.prefix); import pytest"], capture_output=True, text=True, cwd="/")
    assert done.stdout.strip() == env and "No module named 'pytest'" in done.stderr


def test_pack_replaces_only_a_folder_that_is_a_venv_or_empty(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "keep.txt").write_text("mine")
    with pytest.raises(PackError, match="is not a virtual environment"):
        copy_environment(str(tmp_path / "data"))
    assert (tmp_path / "data" / "keep.txt").read_text() == "mine"


def test_names_are_compared_normalized():
    assert _name("PyYAML") == _name("pyyaml") and _name("venv_pack") == _name("venv-pack") == "venv-pack"
