"""What depends on the task (etl.label.task): one small object per task, so the loop never branches on it.

A task gives
    num_outputs             the model's output width (1, or the number of classes)
    loss(outputs, label)    the training loss, a mean over the batch (class weights applied)
    metric_sums(...)        float64 sums over a batch's rows; summed over batches and then all-reduced,
                            so validation metrics are exact over the whole split on any number of ranks
    finalize(total)         the metrics dict from the all-reduced sums, baselines included
    output_schema()         what the model's output means, for the model artifact
    headline / summary_lines  the log line of an epoch and the lines of the `ringtrain train` summary

Model outputs: `[B]` or `[B, 1]` for binary and regression, `[B, K]` for multiclass. Labels arrive as
float32 (the class index for multiclass; for regression the value, standardized when the dataset says so).
`make_task(features, train)` builds the task from the manifest's `features` entry and the train config;
`task_for_metrics(metrics)` gives the class that formats a finished run's metrics (no dataset needed).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ringtrain.config import TrainConfig
from ringtrain.errors import DatasetError
from ringtrain.manifest import Features

_BINS = 200  # score histogram bins for the binary AUC (exact up to the bin width)


def _single(outputs: torch.Tensor) -> torch.Tensor:
    """[B] or [B, 1] -> [B]."""
    return outputs.reshape(outputs.shape[0])


def balanced_weights(counts: list[int]) -> list[float]:
    """rows / (classes * rows of the class); 0 for a class the train split does not have."""
    rows, k = sum(counts), len(counts)
    return [rows / (k * n) if n else 0.0 for n in counts]


class BinaryTask:
    name = "binary"
    num_outputs = 1
    metric_names = ("loss", "accuracy", "auc")

    def __init__(self, *, class_weights: list[float] | None = None, label_values: list[str] | None = None):
        self.class_weights = class_weights
        self.label_values = label_values

    def loss(self, outputs: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        weight = None
        if self.class_weights is not None:
            w0, w1 = self.class_weights
            weight = w0 + (w1 - w0) * label
        return F.binary_cross_entropy_with_logits(_single(outputs), label, weight=weight)

    def zero_sums(self) -> torch.Tensor:
        return torch.zeros(4 + 2 * _BINS, dtype=torch.float64)

    def metric_sums(self, outputs: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """loss, correct, rows, positives, then the score histograms of negatives and positives."""
        logits = _single(outputs)
        loss = F.binary_cross_entropy_with_logits(logits, label, reduction="sum")
        prob = torch.sigmoid(logits)
        head = torch.stack([loss.double(), ((prob > 0.5).float() == label).sum().double(),
                            torch.tensor(float(label.numel()), dtype=torch.float64, device=label.device),
                            label.sum().double()]).cpu()
        bins = (prob.clamp(0, 1 - 1e-9) * _BINS).long().cpu()
        label = label.cpu()
        hist = [torch.bincount(bins[label == cls], minlength=_BINS).double() for cls in (0, 1)]
        return torch.cat([head, *hist])

    def finalize(self, total: torch.Tensor) -> dict:
        loss_sum, correct, rows, positives = total[:4].tolist()
        neg, pos = total[4:].view(2, _BINS)
        prior = positives / max(rows, 1)
        return {
            "task": self.name, "loss": loss_sum / max(rows, 1), "accuracy": correct / max(rows, 1),
            "auc": _auc_from_histograms(neg, pos), "rows": int(rows),
            "baseline_accuracy": max(prior, 1 - prior), "baseline_loss": _entropy([prior, 1 - prior]),
        }

    def output_schema(self) -> dict:
        return {"task": self.name, "shape": ["batch"], "meaning": "logit of P(label = positive)",
                "classes": self.label_values}

    @staticmethod
    def headline(m: dict) -> str:
        return f"accuracy {m['accuracy']:.4f} (baseline {m['baseline_accuracy']:.4f}) auc {m['auc']:.4f}"

    @staticmethod
    def summary_lines(m: dict) -> list[str]:
        return [f"validation accuracy {m['accuracy']:.4f} vs majority baseline {m['baseline_accuracy']:.4f}; "
                f"AUC {m['auc']:.4f} vs 0.5; log-loss {m['loss']:.4f} vs prior {m['baseline_loss']:.4f}"]


class MulticlassTask:
    name = "multiclass"
    metric_names = ("loss", "accuracy", "macro_f1")

    def __init__(self, *, classes: list[str], class_weights: list[float] | None = None):
        self.classes = classes
        self.num_outputs = len(classes)
        self.weight = torch.tensor(class_weights, dtype=torch.float32) if class_weights is not None else None

    def loss(self, outputs: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        weight = self.weight.to(outputs.device) if self.weight is not None else None
        return F.cross_entropy(outputs, label.long(), weight=weight)

    def zero_sums(self) -> torch.Tensor:
        return torch.zeros(3 + 3 * self.num_outputs, dtype=torch.float64)

    def metric_sums(self, outputs: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """loss, correct, rows, then rows per true class, per predicted class, and true positives per class."""
        k, target = self.num_outputs, label.long()
        loss = F.cross_entropy(outputs, target, reduction="sum")
        predicted = outputs.argmax(dim=1)
        hit = predicted == target
        head = torch.stack([loss.double(), hit.sum().double(),
                            torch.tensor(float(target.numel()), dtype=torch.float64, device=target.device)]).cpu()
        target, predicted, hit = target.cpu(), predicted.cpu(), hit.cpu()
        return torch.cat([head, torch.bincount(target, minlength=k).double(),
                          torch.bincount(predicted, minlength=k).double(),
                          torch.bincount(target[hit], minlength=k).double()])

    def finalize(self, total: torch.Tensor) -> dict:
        k = self.num_outputs
        loss_sum, correct, rows = total[:3].tolist()
        true, pred, tp = total[3:3 + k], total[3 + k:3 + 2 * k], total[3 + 2 * k:]
        present = true > 0  # macro average over the classes the split has
        f1 = torch.where(true + pred > 0, 2 * tp / (true + pred).clamp(min=1), torch.zeros_like(tp))
        majority = int(true.argmax())
        # Predicting the majority class always: F1 is 2n/(n + rows) for it, 0 for every other class.
        base_f1 = 2 * float(true[majority]) / max(float(true[majority]) + rows, 1)
        classes_present = max(int(present.sum()), 1)
        return {
            "task": self.name, "loss": loss_sum / max(rows, 1), "accuracy": correct / max(rows, 1),
            "macro_f1": float(f1[present].sum()) / classes_present, "rows": int(rows),
            "baseline_accuracy": float(true[majority]) / max(rows, 1),
            "baseline_macro_f1": base_f1 / classes_present,
            "baseline_loss": _entropy([float(n) / max(rows, 1) for n in true]),
        }

    def output_schema(self) -> dict:
        return {"task": self.name, "shape": ["batch", self.num_outputs],
                "meaning": "one logit per class (softmax gives P(class)), in the order of classes",
                "classes": self.classes}

    @staticmethod
    def headline(m: dict) -> str:
        return (f"accuracy {m['accuracy']:.4f} (baseline {m['baseline_accuracy']:.4f}) "
                f"macro-F1 {m['macro_f1']:.4f} (baseline {m['baseline_macro_f1']:.4f})")

    @staticmethod
    def summary_lines(m: dict) -> list[str]:
        return [f"validation accuracy {m['accuracy']:.4f} vs majority class {m['baseline_accuracy']:.4f}; "
                f"macro-F1 {m['macro_f1']:.4f} vs {m['baseline_macro_f1']:.4f}; "
                f"log-loss {m['loss']:.4f} vs prior {m['baseline_loss']:.4f}"]


class RegressionTask:
    name = "regression"
    num_outputs = 1
    metric_names = ("loss", "rmse", "mae", "r2")

    def __init__(self, *, mean: float, std: float, standardized: bool, loss: str = "mse",
                 huber_delta: float = 1.0):
        self.mean, self.std, self.standardized = mean, std, standardized
        self.kind, self.huber_delta = loss, huber_delta

    def loss(self, outputs: torch.Tensor, label: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        if self.kind == "huber":
            return F.huber_loss(_single(outputs), label, delta=self.huber_delta, reduction=reduction)
        return F.mse_loss(_single(outputs), label, reduction=reduction)

    def to_label_units(self, values: torch.Tensor) -> torch.Tensor:
        values = values.double()
        return values * self.std + self.mean if self.standardized else values

    def zero_sums(self) -> torch.Tensor:
        return torch.zeros(7, dtype=torch.float64)

    def metric_sums(self, outputs: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """training loss, squared and absolute errors (label units), rows, then the loss and errors of
        predicting the train mean."""
        outputs = _single(outputs)
        loss = self.loss(outputs, label, reduction="sum").double()
        mean_in_training_units = torch.full_like(outputs, 0.0 if self.standardized else self.mean)
        base_loss = self.loss(mean_in_training_units, label, reduction="sum").double()
        y, pred = self.to_label_units(label), self.to_label_units(outputs)
        err, base = pred - y, self.mean - y
        rows = torch.tensor(float(y.numel()), dtype=torch.float64, device=y.device)
        return torch.stack([loss, (err ** 2).sum(), err.abs().sum(), rows, base_loss, (base ** 2).sum(),
                            base.abs().sum()]).cpu()

    def finalize(self, total: torch.Tensor) -> dict:
        loss_sum, sse, sae, rows, base_loss, base_sse, base_sae = total.tolist()
        n = max(rows, 1)
        return {
            "task": self.name, "loss": loss_sum / n, "rmse": math.sqrt(sse / n), "mae": sae / n,
            "r2": 1 - sse / base_sse if base_sse > 0 else float("nan"), "rows": int(rows),
            "baseline_loss": base_loss / n, "baseline_rmse": math.sqrt(base_sse / n), "baseline_mae": base_sae / n,
        }

    def output_schema(self) -> dict:
        meaning = (f"the prediction in standard units: label = output * {self.std!r} + {self.mean!r}"
                   if self.standardized else "the predicted label value")
        return {"task": self.name, "shape": ["batch"], "meaning": meaning,
                "label_mean": self.mean, "label_std": self.std, "standardized": self.standardized}

    @staticmethod
    def headline(m: dict) -> str:
        return (f"rmse {m['rmse']:.4f} (baseline {m['baseline_rmse']:.4f}) mae {m['mae']:.4f} "
                f"r2 {m['r2']:.4f}")

    @staticmethod
    def summary_lines(m: dict) -> list[str]:
        return [f"validation RMSE {m['rmse']:.4f} vs train mean {m['baseline_rmse']:.4f}; "
                f"MAE {m['mae']:.4f} vs {m['baseline_mae']:.4f}; R^2 {m['r2']:.4f} vs 0"]


TASKS = {t.name: t for t in (BinaryTask, MulticlassTask, RegressionTask)}


def make_task(features: Features, train: TrainConfig):
    """The task of a dataset (its manifest's `features` entry) under this train config."""
    name = features.task
    stats = features.label_stats
    weights = None
    if train.class_weight == "balanced":
        if "counts" not in stats:
            raise DatasetError("train.class_weight: balanced needs the per-class row counts that the ETL records "
                               "since etl.label.task exists; rebuild the dataset (ringtrain etl --force)")
        weights = balanced_weights(stats["counts"])
    if name == "binary":
        return BinaryTask(class_weights=weights, label_values=features.label_values)
    if name == "multiclass":
        return MulticlassTask(classes=features.label_values, class_weights=weights)
    return RegressionTask(mean=stats["mean"], std=stats["std"], standardized=stats["standardized"],
                          loss=train.regression_loss, huber_delta=train.huber_delta)


def task_for_metrics(metrics: dict):
    """The task class whose headline and summary lines fit these metrics."""
    return TASKS[metrics.get("task", "binary")]


def _entropy(probs: list[float]) -> float:
    return -sum(p * math.log(p) for p in probs if p > 0)


def _auc_from_histograms(neg: torch.Tensor, pos: torch.Tensor) -> float:
    """P(score_pos > score_neg), ties within a bin counted half (exact up to the bin width)."""
    if neg.sum() == 0 or pos.sum() == 0:
        return float("nan")
    neg_below = torch.cumsum(neg, 0) - neg
    wins = (pos * (neg_below + 0.5 * neg)).sum()
    return float(wins / (pos.sum() * neg.sum()))
