"""Layer splitting: the GPipe schedule gives the whole batch's gradients, and trains data-parallel in Spark."""
import threading

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ringtrain.training.models import ResidualMLP, TabularMLP
from ringtrain.training.pipeline import (PipelineError, PipelineModel, bubble_fraction, idle_fraction, partition,
                                         replayed_idle_fraction)

CPU = [torch.device("cpu")]


def inputs_and_label(rows=50, seed=0):
    num, cat, label = batch(rows, seed)
    return (num, cat), label


def batch(rows=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    num = torch.randn(rows, 6, generator=g)
    cat = torch.stack([torch.randint(0, 5, (rows,), generator=g), torch.randint(0, 7, (rows,), generator=g)], 1)
    label = (torch.rand(rows, generator=g) > 0.5).float()
    return num, cat, label


def twins(factory):
    torch.manual_seed(0)
    a = factory()
    b = factory()
    b.load_state_dict(a.state_dict())
    return a, b


@pytest.mark.parametrize("stages,micro", [(2, 1), (2, 4), (3, 5), (6, 8)])
@pytest.mark.parametrize("factory", [lambda: ResidualMLP(6, [5, 7], width=32, num_blocks=4),
                                     lambda: TabularMLP(6, [5, 7], hidden=[32, 16])],
                         ids=["residual_mlp", "tabular_mlp"])
def test_pipelined_step_gives_the_whole_batch_gradients(factory, stages, micro):
    plain, split = twins(factory)
    stages = min(stages, len(split.layers()))
    num, cat, label = batch(rows=50)  # 50 rows over `micro` micro-batches: unequal sizes when micro does not divide
    loss = F.binary_cross_entropy_with_logits(plain(num, cat), label)
    (loss * 0.5).backward()
    pipe = PipelineModel(split, stages, micro, CPU)
    piped_loss = pipe.forward_backward((num, cat), label, F.binary_cross_entropy_with_logits, scale=0.5)
    assert abs(float(piped_loss) - loss.item()) < 1e-6
    for (name, a), b in zip(plain.named_parameters(), split.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-6, rtol=1e-5), name
    with torch.no_grad():
        assert torch.allclose(pipe(num, cat), plain(num, cat), atol=1e-6)
    assert pipe.state_dict().keys() == {f"module.{k}" for k in plain.state_dict()}


def test_schedule_is_fill_drain_and_its_idle_fraction_is_measured():
    _, model = twins(lambda: ResidualMLP(6, [5, 7], width=32, num_blocks=4))
    k, m = 3, 4
    pipe = PipelineModel(model, k, m, CPU)
    pipe.forward_backward(*inputs_and_label(), F.binary_cross_entropy_with_logits, trace=True)
    trace = pipe.last_trace
    for i, ops in enumerate(trace):
        assert [(op[0], op[1]) for op in ops] == [("F", j) for j in range(m)] + [("B", j) for j in reversed(range(m))]
        if i > 0:  # a stage starts a micro-batch only after the stage before it has finished it
            for j in range(m):
                assert ops[j][2] >= trace[i - 1][j][3]
                assert trace[i - 1][2 * m - 1 - j][2] >= ops[2 * m - 1 - j][3]
    assert 0.0 < idle_fraction(trace) < 1.0
    assert bubble_fraction(k, m) == pytest.approx(2 / 6)


def fill_drain_trace(k, m, forward, backward, handoff):
    """The trace of a fill-drain step whose operations take `forward` and `backward` seconds, each input
    reaching its stage `handoff` seconds after the stage that made it finished."""
    ends = {}
    trace = [[] for _ in range(k)]
    for i in range(k):
        clock = 0.0
        for j in range(m):
            start = max(clock, ends[i - 1, "F", j] + handoff if i else 0.0)
            clock = ends[i, "F", j] = start + forward
            trace[i].append(("F", j, start, clock))
    for i in reversed(range(k)):
        clock = ends[i, "F", m - 1]
        for j in reversed(range(m)):
            start = max(clock, ends[i + 1, "B", j] + handoff if i < k - 1 else 0.0)
            clock = ends[i, "B", j] = start + backward
            trace[i].append(("B", j, start, clock))
    return trace


@pytest.mark.parametrize("k, m", [(2, 1), (2, 16), (4, 8)])
def test_replayed_idle_fraction_is_the_bubble_for_equal_operations_and_removes_hand_off_costs(k, m):
    exact = fill_drain_trace(k, m, forward=1.0, backward=2.0, handoff=0.0)
    assert idle_fraction(exact) == pytest.approx(bubble_fraction(k, m))
    assert replayed_idle_fraction(exact) == pytest.approx(bubble_fraction(k, m))
    slow_handoffs = fill_drain_trace(k, m, forward=1.0, backward=2.0, handoff=0.5)
    assert idle_fraction(slow_handoffs) > bubble_fraction(k, m)
    assert replayed_idle_fraction(slow_handoffs) == pytest.approx(bubble_fraction(k, m))


def test_partition_follows_balance_or_parameter_counts():
    layers = [nn.Linear(4, 4), nn.Linear(4, 400), nn.Linear(400, 4), nn.Linear(4, 4)]
    assert partition(layers, 2, [1, 3]) == [[0], [1, 2, 3]]
    assert partition(layers, 2) == [[0, 1], [2, 3]]
    assert partition(layers, 4) == [[0], [1], [2], [3]]
    with pytest.raises(ValueError, match="only 4 layers"):
        partition(layers, 5)
    with pytest.raises(ValueError, match="covers 3 layers"):
        partition(layers, 2, [1, 2])


def test_each_stage_is_moved_to_its_device():
    _, model = twins(lambda: ResidualMLP(6, [5, 7], width=8, num_blocks=2))
    pipe = PipelineModel(model, 2, 2, [torch.device("cpu"), torch.device("meta")])  # meta: a stand-in 2nd device
    assert {p.device.type for layer in pipe.stages[0].layers for p in layer.parameters()} == {"cpu"}
    assert {p.device.type for layer in pipe.stages[1].layers for p in layer.parameters()} == {"meta"}


def test_a_model_without_layers_is_a_clear_error():
    class Opaque(nn.Module):
        def forward(self, num, cat):
            return num.sum(1)

    with pytest.raises(ValueError, match="needs a model with a layers\\(\\) method"):
        PipelineModel(Opaque(), 2, 4, CPU)


def test_a_failing_stage_fails_the_step_without_hanging():
    class Boom(nn.Module):
        def forward(self, x):
            raise RuntimeError("boom in stage 1")

    _, model = twins(lambda: TabularMLP(6, [5, 7], hidden=[8]))
    model.body.append(Boom())
    pipe = PipelineModel(model, 2, 4, CPU, balance=[2, 2])
    with pytest.raises(PipelineError, match="boom in stage 1"):
        pipe.forward_backward(*inputs_and_label(), F.binary_cross_entropy_with_logits)
    assert not [t for t in threading.enumerate() if t.name.startswith("ringtrain-stage")]


def test_poisoned_loss_makes_loss_and_gradients_non_finite():
    _, model = twins(lambda: TabularMLP(6, [5, 7], hidden=[8]))
    pipe = PipelineModel(model, 2, 2, CPU)
    loss = pipe.forward_backward(*inputs_and_label(), F.binary_cross_entropy_with_logits, poison=True)
    assert not torch.isfinite(loss)
    assert not all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.spark
@pytest.mark.slow
@pytest.mark.parametrize("engine", [pytest.param("horovod", marks=pytest.mark.horovod), "ddp"])
def test_two_ranks_with_two_stages_each_train_like_the_unsplit_model(spark, small_dataset, tmp_path, engine):
    from test_training import state_dict, train
    opts = [f"train.engine={engine}", "train.model.name=residual_mlp", "train.model.width=32",
            "train.model.num_blocks=2", "train.epochs=1"]
    split, split_store = train(spark, small_dataset, tmp_path, f"split-{engine}",
                               opts + ["train.pipeline.stages=2", "train.pipeline.micro_batches=4"])
    assert split[0].param_sha256 == split[1].param_sha256
    assert split[0].batches_run == split[1].batches_run == split[0].steps_per_epoch
    metrics = split[0].metrics
    assert metrics["accuracy"] > metrics["baseline_accuracy"] + 0.02
    whole, whole_store = train(spark, small_dataset, tmp_path, f"whole-{engine}", opts)
    # Same data, same initial weights, same steps: only float summation order differs.
    a, b = state_dict(split_store), state_dict(whole_store)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-4, rtol=1e-3), name
