"""What every synthseg trainer shares: resumable checkpoints, the LR schedule, the loop itself.

Every trainer resumes the same way: rerun the same command. Its `--workdir` holds the checkpoint and the
recipe it was started with (`recipe.json`); a rerun continues from the checkpoint, and a rerun with
another recipe is refused rather than mixed into it. `--stop-at N` ends a sitting at step N.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import multiprocessing
import os
import shutil
from pathlib import Path

import torch

from ..config import record_recipe
from ..errors import SynthsegError
from ..progress import loss_progress, recent_loss


def warmup_cosine(warmup: int, total: int):
    """LambdaLR factor: linear warm-up over `warmup` steps, then cosine decay to 0 at `total`."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    return factor


def load_init_pipeline(init_from: str):
    """The folder and float32 pipeline that a recipe's `init_from` names, loaded as any other pipeline. A stage
    whose predecessor was not trained yet is the usual miss, so the error says which field and what to do."""
    from ..pipeline import load_pipeline
    from ..registry import resolve_pipeline

    try:
        source = resolve_pipeline(init_from)
        return source, load_pipeline(source, torch_dtype=torch.float32)
    except SynthsegError as error:
        raise SynthsegError(f"init_from: {error} (train the recipe that exports it first, or name another export)") from None


def poly(total: int, power: float = 0.9, warmup: int = 0):
    """LambdaLR factor (1 - step/total)^power, scaled by a linear warm-up over `warmup` steps: detectron2's
    WarmupPolyLR (MaskFormer's configs set no warm-up)."""
    return lambda step: min(1.0, (step + 1) / warmup if warmup else 1.0) * max(0.0, 1 - step / total) ** power


def write_training_record(directory: str | Path, prior: dict | None = None, **stages: list[float] | None) -> None:
    """training.json in an exported model's folder: for each stage, the steps its checkpoint had reached
    and its recent loss, so an export says which checkpoint it came from.

    `prior` is the record of the model this run fine-tuned (empty for one without a record, such as a hub
    model): its steps are added to a stage's, and a stage given as None (not trained in this run) keeps its
    prior entry, if any.
    """
    prior = prior or {}
    record = {name: prior[name] if losses is None else
              {"steps": prior.get(name, {}).get("steps", 0) + len(losses), "loss": round(recent_loss(losses), 4)}
              for name, losses in stages.items() if losses is not None or name in prior}
    (Path(directory) / "training.json").write_text(json.dumps(record, indent=2) + "\n")


@contextlib.contextmanager
def staged_export(output: Path):
    """A fresh staging folder beside `output` to write an export into; when the block ends without an
    error it replaces `output` whole, so a killed export never leaves a half-written model. Its files are
    made readable by all (safetensors writes owner-only files), as a model folder is shared or packaged."""
    staging = output.with_name(output.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    yield staging
    for file in (f for f in staging.rglob("*") if f.is_file()):
        file.chmod(0o644)
    shutil.rmtree(output, ignore_errors=True)
    os.replace(staging, output)


def claim_workdir(workdir: str | Path, recipe) -> None:
    """Record `recipe` (a dataclass) in a new workdir, or refuse one that another recipe started."""
    Path(workdir).mkdir(parents=True, exist_ok=True)
    record_recipe(Path(workdir) / "recipe.json", recipe, f"{workdir} holds a run of another recipe ({{changed}} differ); "
                  "rerun with the same recipe and options to resume it, or use a new --workdir")


def save_checkpoint(path: Path, step: int, losses: list[float], **objects) -> None:
    """Atomically write the state_dict of each of `objects` (model, optimizer, ...) with step and losses."""
    state = {name: obj.state_dict() for name, obj in objects.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(dict(state, step=step, losses=losses), tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, **objects) -> tuple[int, list[float]]:
    """Restore `objects` from `path` if it exists; returns (step, losses), (0, []) for a fresh start."""
    if not path.is_file():
        return 0, []
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # load_state_dict copies onto the model's device
        for name, obj in objects.items():
            obj.load_state_dict(state[name])
    except (RuntimeError, KeyError, EOFError, OSError) as error:
        raise SynthsegError(f"{path}: corrupt or incompatible checkpoint ({type(error).__name__}); delete it to start over") from None
    return state["step"], state["losses"]


class _Steps(torch.utils.data.Dataset):
    def __init__(self, batches):
        self.batches = batches

    def __getitem__(self, step: int):
        return self.batches(step)


def prefetched(batches, start: int, end: int, workers: int = 1) -> torch.utils.data.DataLoader:
    """batches(start), ..., batches(end - 1), in order: made ahead by `workers` forked worker processes
    (which inherit `batches` and its models without pickling them), or in this process where the
    platform cannot fork. The order, and so each step's batch, does not depend on `workers`."""
    fork = "fork" in multiprocessing.get_all_start_methods()
    return torch.utils.data.DataLoader(_Steps(batches), sampler=range(start, end), batch_size=None, num_workers=workers if fork else 0,
                                       prefetch_factor=2 if fork else None, multiprocessing_context="fork" if fork else None)


def batch_workers(device: torch.device | None) -> int:
    """Worker processes that make batches ahead: one beside a CPU step (the two cores share the work);
    on a GPU, whose step is short, as many as the spare cores, up to 8, so rendering keeps up."""
    if device is None or device.type == "cpu":
        return 1
    return max(1, min(8, (os.cpu_count() or 2) - 1))


def to_device(batch, device: torch.device | None):
    """`batch` with every tensor in it moved to `device`: tensors inside tuples, lists, dicts and
    dataclasses; anything else (a `torch.Generator`, a size) as it is."""
    if device is None:
        return batch
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(item, device) for item in batch)
    if isinstance(batch, dict):
        return {key: to_device(value, device) for key, value in batch.items()}
    if dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        return dataclasses.replace(batch, **{f.name: to_device(getattr(batch, f.name), device) for f in dataclasses.fields(batch)})
    return batch


def train_loop(description: str, step_loss, *, model, optimizer, checkpoint: Path, steps: int, checkpoint_every: int,
               max_steps: int | None = None, schedule=None, ema=None, clip_norm: float | None = None,
               accelerator=None, batches=None, device: torch.device | None = None) -> list[float]:
    """The loop every synthseg trainer runs: resume, step, log, checkpoint.

    step_loss(step) returns the loss of step `step` (its batch must depend only on the step, so a
    resumed run repeats an uninterrupted one). Each step: backward, optional gradient clipping,
    optimiser and LR-schedule steps, EMA update, progress; a checkpoint of model, optimizer,
    schedule ("lr") and ema every `checkpoint_every` steps and at the end. Stops after `max_steps`
    (for runs in several sittings) or `steps`. Returns all losses so far.

    With an `accelerate.Accelerator` (model and optimizer already prepared), gradients go through
    it, so several processes train one model; only the main process writes checkpoints.

    With `batches`, step_loss(step, batch) gets batches(step), made ahead by a DataLoader worker
    process while the steps before train: rendering and frozen encoders (a VAE, a teacher) then run on
    a second core beside the trained model. batches(step) must depend only on the step, and not on the
    trained weights (the worker has a copy of them from before training). With a `device`, the model is
    already there; the workers make batches on the CPU, and each is moved to `device` for its step.
    """
    objects = dict(model=model, optimizer=optimizer)
    objects.update({k: v for k, v in (("lr", schedule), ("ema", ema)) if v is not None})
    if accelerator is not None:
        objects["model"] = accelerator.unwrap_model(model)
    start, losses = load_checkpoint(checkpoint, **objects)
    end = min(steps, max_steps or steps)
    main = accelerator is None or accelerator.is_main_process
    with contextlib.ExitStack() as stack:
        advance = stack.enter_context(loss_progress(description, steps, start)) if main else (lambda *_: None)
        made = iter(prefetched(batches, start, end, batch_workers(device))) if batches is not None else None
        for step in range(start, end):
            loss = step_loss(step) if made is None else step_loss(step, to_device(next(made), device))
            optimizer.zero_grad(set_to_none=True)
            if accelerator is None:
                loss.backward()
            else:
                accelerator.backward(loss)
            if clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
            optimizer.step()
            if schedule is not None:
                schedule.step()
            if ema is not None:
                ema.update_parameters(model)
            losses.append(loss.item())
            advance(step + 1, losses)
            if main and ((step + 1) % checkpoint_every == 0 or step + 1 == end):
                save_checkpoint(checkpoint, step + 1, losses, **objects)
    return losses
