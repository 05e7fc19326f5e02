"""Users' training functions for tests/test_function.py: plain torch loops, their own model and optimizer.

`logistic_regression` trains on the numeric columns of the train split, checkpoints every
`checkpoint_every` steps and resumes from the newest checkpoint; its arguments make one rank misbehave
at one step (raise, die, hang) so that the tests can watch the ring handle it.
"""
import hashlib
import os
import time

import torch


def state_sha256(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def logistic_regression(ctx, lr, *, epochs=2, checkpoint_every=5, raise_at=None, die_at=None, hang_at=None):
    """`raise_at`/`die_at`/`hang_at`: (rank, step) where that rank raises a ValueError, exits at once (attempt 0
    only, right after the checkpoint of that step) or sleeps forever (attempt 0 only)."""
    reader = ctx.reader("train", 128)
    torch.manual_seed(0)
    model = torch.nn.Linear(len(ctx.manifest.features.numeric_columns), 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    step = resumed_from = 0
    model, optimizer = ctx.wrap(model, optimizer)
    state = ctx.load_checkpoint()
    if state is not None:
        getattr(model, "module", model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step = resumed_from = state["step"]
    loss_fn = torch.nn.BCEWithLogitsLoss()
    total = epochs * reader.steps_per_epoch
    while step < total:
        epoch, skip = divmod(step, reader.steps_per_epoch)
        for batch in reader.epoch(epoch, skip):
            batch = ctx.tensors(batch)
            loss = loss_fn(model(batch["num"]).squeeze(1), batch["label"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            ctx.report(step=step, loss=loss)
            if (ctx.rank, step) == raise_at:
                raise ValueError(f"bad value at step {step}")
            if step % checkpoint_every == 0:
                inner = getattr(model, "module", model)
                ctx.save_checkpoint({"model": inner.state_dict(), "optimizer": optimizer.state_dict(),
                                     "step": step}, step)
            if (ctx.rank, step) == die_at and ctx.attempt == 0:
                os._exit(17)
            if (ctx.rank, step) == hang_at and ctx.attempt == 0:
                time.sleep(3600)
    inner = getattr(model, "module", model)
    return {"sha256": state_sha256(inner), "steps": step, "resumed_from": resumed_from, "attempt": ctx.attempt,
            "world_size": ctx.world_size, "shards": reader.files}


def returns_too_much(ctx):
    return b"x" * (17 << 20)
