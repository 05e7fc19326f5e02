"""What a run leaves for others: metrics (JSON + PNG) and the model artifact, both published atomically.

The model folder is complete once artifact.json exists (`ringtrain.publish.publish_folder`: on POSIX the
whole folder is renamed into place; elsewhere the files are uploaded with artifact.json last). It holds:
    state_dict.pt     the weights
    model.pt2         torch.export program (falls back to TorchScript model.ts when export fails)
    artifact.json     input schema (num, cat, and arr when the dataset has array columns), output
                      schema (the task's), the dataset version and its features.json (statistics and
                      vocabularies to encode new rows exactly as in training), the best epoch (by
                      train.monitor, whose weights these are) with its metrics, config
"""
from __future__ import annotations

import io
import json
import logging
import os
import tempfile

import torch

from ringtrain.manifest import Features, Manifest
from ringtrain.publish import atomic_write_bytes, atomic_write_json, publish_folder
from ringtrain.store import join
from ringtrain.training.models import model_inputs

log = logging.getLogger("ringtrain.artifact")


def write_metrics(paths: dict, history: list[dict]) -> None:
    atomic_write_json(paths["metrics_path"], {"epochs": history})
    try:
        _plot(history, join(paths["metrics_path"], "..", "metrics.png"))
    except Exception as exc:  # a plot is a convenience; never fail a run over it
        log.warning("could not draw metrics.png: %s", exc)


def _plot(history: list[dict], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    epochs = [h["epoch"] + 1 for h in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    left.plot(epochs, [h["train_loss"] for h in history], "o-", label="train loss")
    left.plot(epochs, [h["loss"] for h in history], "o-", label="val loss")
    left.axhline(history[-1]["baseline_loss"], ls="--", c="gray", label="baseline")
    left.set_xlabel("epoch"), left.legend()
    # The right panel: the task's headline metrics, each with its baseline when it has one.
    task = history[-1].get("task", "binary")
    shown = {"binary": [("accuracy", "baseline_accuracy"), ("auc", None)],
             "multiclass": [("accuracy", "baseline_accuracy"), ("macro_f1", "baseline_macro_f1")],
             "regression": [("rmse", "baseline_rmse"), ("mae", "baseline_mae")]}[task]
    for metric, baseline in shown:
        line, = right.plot(epochs, [h[metric] for h in history], "o-", label=f"val {metric}")
        if baseline:
            right.axhline(history[-1][baseline], ls="--", c=line.get_color(), label=f"baseline {metric}")
    right.set_xlabel("epoch"), right.legend()
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=90)
    plt.close(fig)
    atomic_write_bytes(path, png.getvalue())


def publish_model(paths: dict, model: torch.nn.Module, example: dict, manifest: Manifest, dataset_dir: str,
                  config: dict, state, task) -> str:
    """`model` holds the best epoch's weights (state.best_epoch), trained on `dataset_dir` with `config` (the
    whole config as plain values); `task` gives the output schema."""
    final = paths["model_dir"]
    with tempfile.TemporaryDirectory(prefix="ringtrain-model-") as staging:  # local: torch writes files
        model = model.cpu().eval()
        torch.save(model.state_dict(), os.path.join(staging, "state_dict.pt"))
        inputs = tuple(torch.from_numpy(x[:8]) for x in model_inputs(example))
        program = _export(model, inputs, staging)
        features = manifest.features
        history = state.history
        best = history[state.best_epoch] if history else {}
        info = {
            "program": program,
            "inputs": input_schema(features),
            "output": task.output_schema(),
            "dataset": {"dir": dataset_dir, "name": manifest.dataset,
                        "version": os.path.basename(dataset_dir.rstrip("/")),
                        "features_json": join(dataset_dir, features.path)},
            "best_epoch": state.best_epoch, "metrics": best, "history": history,
            "train_config": config["train"], "config": config,
        }
        with open(os.path.join(staging, "artifact.json"), "w") as f:
            json.dump(info, f, indent=2, sort_keys=True)
        # A rerun of the same run_id replaces the old artifact whole.
        publish_folder(staging, final, marker="artifact.json")
    return final


def input_schema(features: Features) -> dict:
    """The model's positional inputs, in order: num, cat, and arr when the dataset has array columns."""
    schema = {"num": {"columns": features.numeric_columns, "dtype": "float32"},
              "cat": {"columns": list(features.categorical_cardinalities), "dtype": "int64",
                      "cardinalities": features.categorical_cardinalities}}
    arrays = features.arrays
    if arrays:  # side by side, in this order: [B, sum of lengths]
        schema["arr"] = {"columns": list(arrays), "lengths": list(arrays.values()), "dtype": "float32"}
    return schema


def _export(model: torch.nn.Module, inputs: tuple, folder: str) -> str:
    try:
        batch = torch.export.Dim("batch")
        program = torch.export.export(model, inputs, dynamic_shapes=tuple({0: batch} for _ in inputs))
        torch.export.save(program, os.path.join(folder, "model.pt2"))
        return "model.pt2"
    except Exception as exc:
        log.warning("torch.export failed (%s); saving TorchScript instead", exc)
        torch.jit.trace(model, inputs).save(os.path.join(folder, "model.ts"))
        return "model.ts"
