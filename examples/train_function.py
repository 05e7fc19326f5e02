"""Your own training loop in ringtrain's ring: a plain torch function, called once per rank.

From Python (a driver script, a notebook):

    from ringtrain.config import load_config
    from ringtrain.spark import get_spark
    from ringtrain.training.launcher import run_function
    from train_function import train        # with examples/ on sys.path

    cfg = load_config("conf/demo.yaml", ["train.engine=ddp"])
    spark = get_spark(cfg.spark, barrier_slots=cfg.train.num_workers)
    values = run_function(spark, cfg, train, 0.01, epochs=3, dataset_dir="runs/demo/datasets/churn/v000001")
    # values[r] is what rank r returned

From the command line (the module must be importable on the driver and the executors; import it as
`train_function`, not `examples.train_function`: some packages install a top-level `examples` of their own):

    PYTHONPATH=examples ringtrain train --config conf/demo.yaml --set train.function=train_function:train_from_config

It trains a logistic regression on the dataset's numeric columns with its own model and optimizer,
checkpoints every 50 steps and, when an attempt failed (a rank was killed or lost, or hung), resumes
from its newest checkpoint: ringtrain calls it again with ctx.attempt one higher.
"""
import io

import torch

from ringtrain import store
from ringtrain.publish import atomic_write_bytes


def train(ctx, lr: float, *, epochs: int = 3, checkpoint_every: int = 50) -> dict:
    reader = ctx.reader("train")                         # this rank's shards; every rank the same steps
    torch.manual_seed(ctx.config.train.seed)
    model = torch.nn.Linear(len(ctx.manifest.features.numeric_columns), 1).to(ctx.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    step = 0
    model, optimizer = ctx.wrap(model, optimizer)        # DDP (ddp) or Horovod's optimizer (horovod)
    state = ctx.load_checkpoint()                        # None on a fresh run; after wrap (see ctx.wrap)
    if state is not None:
        getattr(model, "module", model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step = state["step"]
    loss_fn = torch.nn.BCEWithLogitsLoss()
    while step < epochs * reader.steps_per_epoch:
        epoch, skip = divmod(step, reader.steps_per_epoch)
        for batch in reader.epoch(epoch, skip):          # each batch also beats the hang watchdog
            batch = ctx.tensors(batch)
            loss = loss_fn(model(batch["num"]).squeeze(1), batch["label"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            if step % checkpoint_every == 0:             # every rank calls it; rank 0 writes
                inner = getattr(model, "module", model)
                ctx.save_checkpoint({"model": inner.state_dict(), "optimizer": optimizer.state_dict(),
                                     "step": step}, step)
        ctx.report(epoch=epoch, loss=loss)
    inner = getattr(model, "module", model)
    if ctx.rank == 0 and ctx.model_dir:                  # on any store (a folder, s3://, hdfs://), all or nothing
        buffer = io.BytesIO()
        torch.save(inner.state_dict(), buffer)
        atomic_write_bytes(store.join(ctx.model_dir, "logreg.pt"), buffer.getvalue())
    return {"loss": loss.item(), "steps": step}


def train_from_config(ctx) -> dict:
    """`train.function` takes no arguments besides ctx: read them from the config."""
    return train(ctx, ctx.config.train.lr, epochs=ctx.config.train.epochs)
