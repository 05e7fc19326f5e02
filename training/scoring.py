"""Scoring with a model artifact alone: its exported program and its features.json.

A model reference is a registry version or alias (`champion`, `v000003`), or a run's model folder.
What the model outputs means to a user depends on the task; each task is one small class here
(`TASK_SCORES`), which names the output columns and fills them:
  binary       the logit of P(label = positive) -> `score`, the probability
  multiclass   K logits -> `prediction` (the class, as the label's own value) and `prob_<class>` per class
  regression   the output -> `prediction` in the label's units (the ETL's standardization undone)

`evaluate` computes the training loop's own validation metrics (`training.loop.evaluate`, the same
code) on one split of a published dataset, overall and per partition, in this process. The
dataset's shards are already encoded, so they must have been encoded with the model's own
features.json: in incremental mode (the retrain job's) every version shares the base's features.
Rows that are not yet encoded are scored by `ringtrain.jobs.predict`, which encodes them as in training.
"""
from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass

import numpy as np
import torch

from ringtrain.errors import FeatureMismatch, ModelNotFound
from ringtrain.manifest import IncrementalManifest, Manifest, Shard, load_manifest, shard_path, shard_paths
from ringtrain.registry import FEATURES, VERSION_MARKER, Registry
from ringtrain.store import exists, join, read_bytes, read_json


class BinaryScores:
    """binary: the logit of P(label = positive) -> `score`, that probability."""

    def __init__(self, features: dict):
        self.columns = [("score", "double")]

    def __call__(self, outputs: torch.Tensor) -> dict[str, np.ndarray]:
        return {"score": torch.sigmoid(outputs.float().reshape(-1)).double().cpu().numpy()}  # [B] or [B, 1] -> [B]


class MulticlassScores:
    """multiclass: one logit per class -> `prediction`, the most probable class as the label's own value (as the
    ETL recorded it in features.json), and `prob_<class>`, the softmax, for every class in the model's order."""

    def __init__(self, features: dict):
        self.classes = list(features["label_values"])
        self.columns = [("prediction", "string"), *((prob_column(c), "double") for c in self.classes)]

    def __call__(self, outputs: torch.Tensor) -> dict[str, np.ndarray]:
        probs = torch.softmax(outputs.double(), dim=1).cpu().numpy()
        out = {"prediction": np.asarray(self.classes, dtype=object)[probs.argmax(axis=1)]}
        out.update((prob_column(c), probs[:, i]) for i, c in enumerate(self.classes))
        return out


class RegressionScores:
    """regression: the output -> `prediction` in the label's units. With etl.label.standardize the model was
    trained on (label - mean) / std of the train split (features.json `label_stats`): undone here."""

    def __init__(self, features: dict):
        self.label_stats = features["label_stats"]
        self.columns = [("prediction", "double")]

    def __call__(self, outputs: torch.Tensor) -> dict[str, np.ndarray]:
        return {"prediction": to_label_units(outputs.double().reshape(-1).cpu().numpy(), self.label_stats)}


def prob_column(value: str) -> str:
    """The output column of one class's probability."""
    return f"prob_{value}"


def to_label_units(values: np.ndarray, label_stats: dict) -> np.ndarray:
    """A regression model's outputs in the label's units: `label_stats` is features.json's entry."""
    if label_stats.get("standardized"):
        return values * label_stats["std"] + label_stats["mean"]
    return values


# task -> what the model's output means to a user: the output columns and the function that fills them.
TASK_SCORES = {"binary": BinaryScores, "multiclass": MulticlassScores, "regression": RegressionScores}


def task_scores(task: str, features: dict):
    """The score columns of a model of `task`, built from its features.json (classes, label statistics)."""
    return TASK_SCORES[task](features)


@dataclass(frozen=True)
class ModelFiles:
    """Where one model's files are, and what training wrote about it (artifact.json)."""

    folder: str
    features_json: str
    artifact: dict
    version: str | None = None  # the registry version: an alias or version looked up, or a version folder

    @property
    def program(self) -> str:
        return join(self.folder, self.artifact["program"])

    @property
    def task(self) -> str:
        return self.artifact.get("config", {}).get("etl", {}).get("label", {}).get("task", "binary")

    def features(self) -> dict:
        return read_json(self.features_json)


def resolve_model(ref: str, *, store_root: str, registry_name: str | None) -> ModelFiles:
    """`ref`: a model folder (a run's `model/` or a registry version folder), or an alias/version of
    the model `registry_name` (retrain.model)."""
    if exists(join(ref, "artifact.json")):
        artifact = read_json(join(ref, "artifact.json"))
        own = join(ref, FEATURES)  # registry versions carry their own copy, and their version.json
        marker = join(ref, VERSION_MARKER)
        return ModelFiles(ref, own if exists(own) else artifact["dataset"]["features_json"], artifact,
                          version=read_json(marker)["version"] if exists(marker) else None)
    if registry_name is None:
        raise ModelNotFound(f"--model {ref}: not a model folder (no artifact.json), and the config has no "
                            f"retrain.model to look it up in a registry; pass a folder or set retrain.model")
    folder = Registry(store_root, registry_name).resolve(ref)
    return ModelFiles(folder, join(folder, FEATURES), read_json(join(folder, "artifact.json")),
                      version=os.path.basename(folder))


class Program(torch.nn.Module):
    """An exported program as a module taking (num, cat[, arr]). It was exported in eval mode; exported modules
    refuse train()/eval(), which evaluation code calls on any model, so mode switches are no-ops here."""

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.module = module

    def train(self, mode: bool = True) -> "Program":
        return self

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.module(*inputs)


def load_program(model: ModelFiles, device: torch.device | None = None) -> Program:
    """The model's exported program, read through the store (so from any store)."""
    blob = io.BytesIO(read_bytes(model.program))
    if model.program.endswith(".pt2"):
        module = torch.export.load(blob).module()
    else:
        module = torch.jit.load(blob, map_location="cpu")
    return Program(module.to(device) if device is not None else module)


def score_arrays(module: torch.nn.Module, scores, inputs: list[np.ndarray]) -> dict[str, np.ndarray]:
    """The score columns (`task_scores`) of encoded rows (the model's inputs: num, cat[, arr]): what `predict`
    writes. Probabilities and regression predictions as float64."""
    device = next(iter(module.parameters()), torch.empty(0)).device
    with torch.no_grad():
        return scores(module(*(torch.from_numpy(x).to(device) for x in inputs)))


# ----------------------------------------------------------------------------- evaluate

def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


class _OneProcess:
    """The one thing `training.loop.evaluate` asks of an engine, for a world of one."""

    rank, size = 0, 1

    @staticmethod
    def allreduce_sum(tensor: torch.Tensor) -> torch.Tensor:
        return tensor


def check_same_features(model: ModelFiles, dataset_dir: str, manifest: Manifest) -> None:
    dataset_features = join(dataset_dir, manifest.features.path)
    if read_json(dataset_features) != model.features():
        raise FeatureMismatch(
            f"{dataset_dir} was encoded with other feature statistics than the model's {model.features_json}: "
            f"its metrics would be meaningless. Evaluate on a version of the dataset the model was trained on "
            f"(an incremental dataset keeps its base's features), or score raw rows with `ringtrain predict`")


def evaluate(model: ModelFiles, dataset_dir: str, split: str = "test", *, by_partition: bool = True,
             device: torch.device | None = None) -> dict:
    """{"split", "dataset_dir", "overall": metrics, "partitions": {name: metrics}}: the training loop's
    metrics of the model's task (for binary: loss, accuracy, auc, baselines, rows) on `split`.
    `device`: where the model runs; default the first GPU when this process sees one, else the CPU."""
    from ringtrain.config import TrainConfig
    from ringtrain.schema import build
    from ringtrain.training.assemble import columns_and_task
    from ringtrain.training.data import ReadPlan, chunk_checks, open_reader
    from ringtrain.training.loop import evaluate as loop_evaluate

    manifest = load_manifest(dataset_dir)
    check_same_features(model, dataset_dir, manifest)
    device = device or default_device()
    module = load_program(model, device)
    cols, task = columns_and_task(build(TrainConfig, model.artifact["train_config"], "train"), manifest)

    def metrics(files: list[str], shards: list[Shard]) -> dict:
        # Every column chunk read is checked against the manifest's CRC32s, as in training.
        reader = open_reader("arrow", ReadPlan(files, None, None, 0, 0, chunk_checks(files, shards)), cols, 4096,
                             0, 0)
        return loop_evaluate(module, reader, _OneProcess(), device, task, contextlib.nullcontext())

    result = {"split": split, "dataset_dir": dataset_dir, "partitions": {},
              "overall": metrics(shard_paths(dataset_dir, manifest, split), manifest.splits[split].shards)}
    if by_partition and isinstance(manifest, IncrementalManifest):
        for part in manifest.partitions:
            shards = part.splits[split].shards
            if part.splits[split].rows:
                result["partitions"][part.name] = metrics([shard_path(dataset_dir, split, s) for s in shards],
                                                          shards)
    return result
