import os
import re
import sys

import pytest

from ringtrain.jobs.cli import main
from ringtrain.config import load_config
from ringtrain.schema import ConfigError, to_dict
from ringtrain.stack import installed

from conftest import ROOT

DEMO = os.path.join(ROOT, "conf", "demo.yaml")


@pytest.mark.parametrize("name", sorted(n for n in os.listdir(os.path.join(ROOT, "conf")) if n.endswith(".yaml")))
def test_every_shipped_config_loads(name):
    cfg = load_config(os.path.join(ROOT, "conf", name))
    assert cfg.train.num_workers >= 1


@pytest.mark.parametrize("override, message", [
    ("train.epochz=3", "unknown key train.epochz"),
    ("train.epochs=three", "train.epochs: expected int, got 'three'"),
    ("train.engine=mpi", "train.engine: must be one of 'auto', 'horovod', 'ddp'"),
    ("train.reader=parquet", "train.reader: must be one of 'auto', 'petastorm', 'arrow'"),
    ("train.epochs=0", "train.epochs: must be >= 1"),
    ("etl.split.train=0.9", "etl.split: train + val + test must be 1"),
    ("etl.label.column=nope", "etl.label.column: 'nope' is not among etl.columns"),
    ("train.num_workers=16", "train.num_workers: 16 ranks but the dataset is sharded for at most"),
    ("etl.source.format=xml", "etl.source.format: must be one of"),
    ("train.model.name=resnet", "train.model.name: 'resnet' is neither built in"),
    ("train.pipeline.stages=0", "train.pipeline.stages: must be >= 1"),
    ("train.pipeline.balance=[2, 2]", "train.pipeline.balance: needs 1 entries"),
    ("train.pipeline.micro_batches=4096", "train.pipeline.micro_batches: 4096 micro-batches do not fit"),
])
def test_bad_values_fail_at_load_naming_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(DEMO, [override])
    assert message in str(err.value)


def test_bad_column_declaration_names_the_column():
    with pytest.raises(ConfigError, match="column 'plan': role 'numeric' needs a numeric type"):
        load_config(DEMO, ['etl.columns=[{name: plan, type: string, role: numeric}, '
                           '{name: churned, type: string, role: label}, {name: customer_id, type: string, role: key}]'])


def test_missing_file_names_it(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "nope.yaml"))


def test_overrides_apply_typed():
    cfg = load_config(DEMO, ["train.lr=0.01", "train.model.hidden=[32, 16]", "train.grad_clip_norm=null"])
    assert cfg.train.lr == 0.01 and cfg.train.model.hidden == [32, 16] and cfg.train.grad_clip_norm is None


@pytest.mark.parametrize("word, key, expected", [
    ("off", "train.amp", "off"), ("OFF", "train.amp", "off"), ("Off", "train.amp", "off"),
    ("bf16", "train.amp", "bf16"), ("'off'", "train.amp", "off"),
])
def test_documented_words_that_yaml_reads_as_booleans_keep_their_meaning(tmp_path, word, key, expected):
    """`amp: off` is read by YAML 1.1 as false; the documented value must still work, in a file and in --set."""
    section, leaf = key.split(".")
    with open(DEMO) as f:
        text = f.read()
    config = tmp_path / "c.yaml"
    config.write_text(text.replace(f"{section}:\n", f"{section}:\n  {leaf}: {word}\n", 1))
    assert getattr(load_config(str(config)).train, leaf) == expected
    assert getattr(load_config(DEMO, [f"{key}={word}"]).train, leaf) == expected


def test_a_boolean_where_no_word_means_it_is_still_refused():
    with pytest.raises(ConfigError, match="train.amp: must be one of 'auto', 'off', 'bf16', 'fp16', got True"):
        load_config(DEMO, ["train.amp=on"])


@pytest.fixture
def spark4_like(monkeypatch):
    """This environment as the Spark 4 stack sees it: Horovod and petastorm cannot be found. A None entry in
    sys.modules is Python's own marker for an import that must fail (find_spec answers None for it); on the
    Spark 4 stack they are absent anyway."""
    for name in ("horovod", "petastorm"):
        monkeypatch.setitem(sys.modules, name, None)


def test_auto_resolves_to_what_is_installed():
    train = load_config(DEMO).train
    assert train.engine == ("horovod" if installed("horovod") else "ddp")
    assert train.reader == ("petastorm" if installed("petastorm") else "arrow")


def test_auto_resolves_to_ddp_and_arrow_without_horovod_and_petastorm(spark4_like):
    train = load_config(DEMO).train
    assert (train.engine, train.reader) == ("ddp", "arrow")
    assert to_dict(train)["engine"] == "ddp"  # what the worker spec and the model artifact record


@pytest.mark.parametrize("override, why, instead", [
    ("train.engine=horovod", "Horovod is not installed in this environment", "Use train.engine: ddp"),
    ("train.reader=petastorm", "petastorm is not installed in this environment", "Use train.reader: arrow"),
])
def test_an_absent_engine_or_reader_exits_2_at_load_saying_why_and_what_instead(spark4_like, capsys, override,
                                                                                why, instead):
    with pytest.raises(ConfigError, match="^" + re.escape(f"{DEMO}: {override.split('=')[0]}: ")):
        load_config(DEMO, [override])
    code = main(["train", "--config", DEMO, "--set", override])  # the CLI door: nothing started, exit 2
    err = capsys.readouterr().err
    assert code == 2 and why in err and instead in err and "Spark 4" in err, err


def _options(help_text: str) -> list[str]:
    return re.findall(r"(?<![\w-])--[a-z][a-z-]*", help_text.split("options:")[0])


def test_every_spark_submit_script_takes_its_verbs_arguments_from_the_one_command_table():
    import subprocess
    from ringtrain.jobs.cli import COMMANDS
    scripts = {name: f"{'demo' if name == 'demo' else name + '_job'}.py" for name in
               ("etl", "train", "demo", "doctor", "retrain", "predict")}
    assert set(scripts.values()) <= set(os.listdir(os.path.join(ROOT, "jobs")))
    assert set(COMMANDS) == {*scripts, "evaluate", "models", "pack"}
    for name, script in scripts.items():
        verb = subprocess.run([sys.executable, "-m", "ringtrain.jobs.cli", name, "--help"], capture_output=True,
                              text=True, timeout=60)
        job = subprocess.run([sys.executable, os.path.join(ROOT, "jobs", script), "--help"], capture_output=True,
                             text=True, timeout=60)
        assert verb.returncode == job.returncode == 0, verb.stderr + job.stderr
        assert "--config" in _options(verb.stdout) and _options(job.stdout) == _options(verb.stdout), name
