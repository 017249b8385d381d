"""The training engine: recipes, batched augmentation on the device, the loop, run folders, resume, DDP.

The data lives as one uint8 tensor on the training device. Every random choice is a function of
(seed, epoch, step), so a run resumed from its last checkpoint ends exactly like one that never stopped.
A run folder holds config.json, metrics.jsonl, status.json, last.pt, best.pt and, at the end, report.json.
"""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F

from . import checkpoint
from .checkpoint import ModelCard
from .data import CIFAR10_NORMALIZATION, DATA_ROOT, SEED_NORMALIZATION, ImageSet, Normalization, load, stratified_split
from .device import device_name, pick_device
from .evaluate import evaluate
from .model import MobileNetV1, input_resolution


@dataclass(frozen=True)
class Recipe:
    batch_size: int
    lr: float
    epochs: int
    # "plateau": ReduceLROnPlateau on the training loss; "onecycle": linear warm-up then linear decay to 0
    schedule: str
    weight_decay: float
    decay_norm_and_bias: bool
    nesterov: bool
    label_smoothing: float
    normalization: Normalization
    flip_tta: bool
    warmup_epochs: float = 0.0
    momentum: float = 0.9


RECIPES = {
    # The seed blog post, exactly.
    "seed": Recipe(
        batch_size=64, lr=0.1, epochs=20, schedule="plateau", weight_decay=5e-4, decay_norm_and_bias=True,
        nesterov=False, label_smoothing=0.0, normalization=SEED_NORMALIZATION, flip_tta=False,
    ),
    # Chosen by measurement, see BENCHMARKS.md.
    "fast": Recipe(
        batch_size=128, lr=0.2, epochs=30, schedule="onecycle", weight_decay=5e-4, decay_norm_and_bias=False,
        nesterov=True, label_smoothing=0.1, normalization=CIFAR10_NORMALIZATION, flip_tta=True, warmup_epochs=2,
    ),
}
DEFAULT_RECIPE = "fast"


@dataclass
class TrainConfig:
    data: str = "cifar10"
    recipe: str = DEFAULT_RECIPE
    epochs: int | None = None  # None: the recipe's
    batch_size: int | None = None
    lr: float | None = None
    alpha: float = 1.0
    beta: float = 1.0
    stem: str = "cifar"
    seed: int = 0
    val_size: int = 5000
    subset: int | None = None
    device: str = "auto"
    compile: bool = False
    data_root: str = str(DATA_ROOT)
    download: bool = True

    def __post_init__(self) -> None:
        if self.recipe not in RECIPES:
            raise ValueError(f"recipe must be one of {', '.join(RECIPES)}, got {self.recipe!r}")
        for name in ("epochs", "batch_size", "subset"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name.replace('_', '-')} must be a positive integer, got {value!r}")
        if self.lr is not None and not 0 < self.lr < 100:
            raise ValueError(f"lr must be positive, got {self.lr!r}")
        if self.val_size < 0:
            raise ValueError(f"val-size must be 0 or more, got {self.val_size}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        MobileNetV1(10, self.alpha, self.stem)  # validates α and the stem early, on meta-free CPU
        input_resolution(self.stem, self.beta)

    @property
    def effective(self) -> Recipe:
        """The recipe with this run's overrides applied."""
        base = RECIPES[self.recipe]
        return replace(
            base,
            epochs=self.epochs or base.epochs,
            batch_size=self.batch_size or base.batch_size,
            lr=self.lr or base.lr,
        )

    @property
    def resolution(self) -> int:
        return input_resolution(self.stem, self.beta)


class TrainError(RuntimeError):
    """A training failure with a message fit for the user (bad data, out of memory, …)."""


# ---- pieces of the loop ------------------------------------------------------------------------


def step_generator(seed: int, epoch: int, step: int, device: torch.device) -> torch.Generator:
    """The random stream of one training step, so augmentation never depends on history."""
    return torch.Generator(device=device).manual_seed((seed * 1_000_003 + epoch) * 1_000_003 + step)


def augment(images: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop with zero padding and random horizontal flip for a uint8 batch, all on its device."""
    n, c, h, w = images.shape
    device = images.device
    padded = F.pad(images, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n, 1), generator=generator, device=device)
    dx = torch.randint(0, 2 * pad + 1, (n, 1), generator=generator, device=device)
    rows = (dy + torch.arange(h, device=device))[:, None, :, None]
    cols = (dx + torch.arange(w, device=device))[:, None, None, :]
    batch = torch.arange(n, device=device)[:, None, None, None]
    channel = torch.arange(c, device=device)[None, :, None, None]
    cropped = padded[batch, channel, rows, cols]
    flip = torch.rand(n, generator=generator, device=device) < 0.5
    return torch.where(flip[:, None, None, None], cropped.flip(3), cropped)


def onecycle_lr(recipe: Recipe, step: int, total_steps: int, steps_per_epoch: int) -> float:
    warmup = max(1, round(recipe.warmup_epochs * steps_per_epoch))
    if step < warmup:
        return recipe.lr * (step + 1) / warmup
    return recipe.lr * max(0.0, 1 - (step - warmup) / max(1, total_steps - warmup))


def make_optimizer(model: torch.nn.Module, recipe: Recipe) -> torch.optim.SGD:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if recipe.decay_norm_and_bias or p.ndim > 1 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": recipe.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return torch.optim.SGD(groups, lr=recipe.lr, momentum=recipe.momentum, nesterov=recipe.nesterov)


def make_plateau(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.ReduceLROnPlateau:
    """The seed's schedule, stepped once per epoch with the training loss."""
    return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, "min", factor=0.5, patience=5, min_lr=1e-6)


class StopRequest:
    """Set by SIGINT/SIGTERM: the loop finishes its step, saves and exits cleanly."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: object) -> None:
        self.requested = True

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class RunFolder:
    """The files of one run; only the writing rank touches them."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.config = self.path / "config.json"
        self.metrics = self.path / "metrics.jsonl"
        self.status = self.path / "status.json"
        self.report = self.path / "report.json"
        self.last = self.path / "last.pt"
        self.best = self.path / "best.pt"

    def write_json(self, path: Path, obj: dict) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(obj, indent=2))
        os.replace(tmp, path)

    def set_status(self, state: str, **extra: object) -> None:
        self.write_json(self.status, {"state": state, "pid": os.getpid(), "updated": time.time(), **extra})

    def append_metrics(self, row: dict) -> None:
        with open(self.metrics, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()

    def truncate_metrics(self, step: int, epoch: int) -> None:
        """Keep the rows up to the saved state, so a resumed run never repeats or skips an epoch."""
        if not self.metrics.exists():
            return
        rows = [json.loads(line) for line in self.metrics.read_text().splitlines() if line.strip()]
        keep = [r for r in rows if (r["epoch"] <= epoch if r["kind"] == "epoch" else r["step"] <= step)]
        tmp = self.metrics.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in keep))
        os.replace(tmp, self.metrics)


def read_metrics(run: Path | str) -> list[dict]:
    """metrics.jsonl rows, skipping a partly written last line."""
    path = RunFolder(run).metrics
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


# ---- the loop ----------------------------------------------------------------------------------


def split_train_val(full: ImageSet, val_size: int, seed: int, subset: int | None = None) -> tuple[ImageSet, ImageSet]:
    """The training images and the seeded validation split held out of them (at most 20% of the images).

    With subset, only that many images are used: a seeded, class-balanced sample, since image folders
    are sorted by class.
    """
    if subset and subset < len(full):
        full = full.subset(stratified_split(full.labels, subset, seed + 1)[1])
    val_size = min(val_size, len(full) // 5)
    train_idx, val_idx = stratified_split(full.labels, val_size, seed)
    return full.subset(train_idx), full.subset(val_idx)


def load_splits(cfg: TrainConfig) -> tuple[ImageSet, ImageSet]:
    """The training images and the seeded validation split held out of them."""
    full = load(cfg.data, "train", cfg.resolution, root=cfg.data_root, download=cfg.download)
    return split_train_val(full, cfg.val_size, cfg.seed, cfg.subset)


def train(
    cfg: TrainConfig,
    out: Path | str,
    resume: bool = False,
    on_epoch: Callable[[dict], None] | None = None,
    on_step: Callable[[dict], None] | None = None,
) -> dict:
    """Train into the run folder `out` (resuming its last.pt when asked); returns the final report."""
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        use_cuda = cfg.device != "cpu" and torch.cuda.is_available()
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if use_cuda else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
        device = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
    else:
        rank, world = 0, 1
        device = pick_device(cfg.device)
    writer = rank == 0
    run = RunFolder(out)
    try:
        return _train(cfg, run, resume, device, rank, world, writer, on_epoch, on_step)
    except Exception as e:
        if writer and run.path.exists():
            run.set_status("failed", error=str(e)[:500])
        raise
    finally:
        if distributed:
            dist.destroy_process_group()


def _train(cfg, run: RunFolder, resume, device, rank, world, writer, on_epoch, on_step) -> dict:
    recipe = cfg.effective
    if recipe.batch_size % world:
        raise TrainError(f"batch size {recipe.batch_size} must divide evenly over {world} processes")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    if writer:
        run.path.mkdir(parents=True, exist_ok=True)
        if not resume:
            run.write_json(run.config, asdict(cfg))
            run.metrics.unlink(missing_ok=True)
        run.set_status("loading")
    train_set, val_set = _load_on_device(cfg, device, rank, world)
    images, labels = train_set.images, train_set.labels

    torch.manual_seed(cfg.seed)
    model = MobileNetV1(len(train_set.classes), cfg.alpha, cfg.stem).to(device, memory_format=torch.channels_last)
    optimizer = make_optimizer(model, recipe)
    plateau = make_plateau(optimizer)
    card = ModelCard(cfg.alpha, cfg.stem, cfg.resolution, train_set.classes,
                     recipe.normalization.mean, recipe.normalization.std)

    steps_per_epoch = max(1, len(train_set) // recipe.batch_size)
    total_steps = steps_per_epoch * recipe.epochs
    state = {"epoch": 0, "step_in_epoch": 0, "loss_sum": 0.0, "correct": 0, "seen": 0, "best_acc": -1.0,
             "elapsed_s": 0.0}
    if resume:
        payload = checkpoint.read(run.last)
        model.load_state_dict(payload["state_dict"])
        optimizer.load_state_dict(payload["train_state"]["optimizer"])
        plateau.load_state_dict(payload["train_state"]["plateau"])
        state.update(payload["train_state"]["loop"])
        if writer:
            run.truncate_metrics(state["epoch"] * steps_per_epoch + state["step_in_epoch"], state["epoch"])

    train_model = torch.compile(model) if cfg.compile else model
    if world > 1:
        device_ids = [device.index] if device.type == "cuda" else None
        train_model = torch.nn.parallel.DistributedDataParallel(train_model, device_ids=device_ids)

    def save_last(status: str) -> None:
        if writer:
            checkpoint.save(run.last, model, replace(card, training=summary(status)), {
                "optimizer": optimizer.state_dict(), "plateau": plateau.state_dict(), "loop": dict(state)})

    def summary(status: str) -> dict:
        return {"data": cfg.data, "recipe": cfg.recipe, "epochs": state["epoch"], "planned_epochs": recipe.epochs,
                "batch_size": recipe.batch_size, "lr": recipe.lr, "seed": cfg.seed, "val_size": cfg.val_size,
                "subset": cfg.subset,
                "val_acc": state["best_acc"] if state["best_acc"] >= 0 else None, "flip_tta": recipe.flip_tta,
                "train_time_s": round(state["elapsed_s"], 1), "device": device_name(device), "status": status}

    if writer:
        run.set_status("running", epoch=state["epoch"], epochs=recipe.epochs)
    started = time.perf_counter() - state["elapsed_s"]
    with StopRequest() as stop:
        while state["epoch"] < recipe.epochs:
            epoch = state["epoch"]
            order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(cfg.seed * 10007 + epoch))
            order = order.to(device)
            model.train()
            epoch_train_s, epoch_images = 0.0, 0
            last_log = time.perf_counter()
            window = torch.zeros(3, device=device)  # loss sum, correct, seen since the last step row
            while state["step_in_epoch"] < steps_per_epoch:
                t0 = time.perf_counter()
                s = state["step_in_epoch"]
                index = order[s * recipe.batch_size:(s + 1) * recipe.batch_size][rank::world]
                g = step_generator(cfg.seed, epoch, s, device)
                x = recipe.normalization.apply(augment(images[index], g)).contiguous(memory_format=torch.channels_last)
                y = labels[index]
                global_step = epoch * steps_per_epoch + s
                if recipe.schedule == "onecycle":
                    for group in optimizer.param_groups:
                        group["lr"] = onecycle_lr(recipe, global_step, total_steps, steps_per_epoch)
                loss, logits = _sgd_step(train_model, optimizer, x, y, recipe, device)
                hits = (logits.argmax(1) == y).sum()
                window += torch.stack([loss.detach() * len(y), hits, torch.tensor(len(y), device=device)])
                state["step_in_epoch"] += 1
                now = time.perf_counter()
                epoch_train_s += now - t0
                epoch_images += len(y) * world
                stopping = _stop_agreed(stop, world, device)
                if now - last_log >= 1.0 or state["step_in_epoch"] == steps_per_epoch or stopping:
                    loss_sum, correct, seen = window.tolist()
                    state["loss_sum"] += loss_sum
                    state["correct"] += int(correct)
                    state["seen"] += int(seen)
                    window.zero_()
                    last_log = now
                    done = global_step + 1
                    elapsed = now - started
                    row = {"kind": "step", "epoch": epoch + 1, "step": done, "train_loss": loss_sum / max(seen, 1),
                           "train_acc": correct / max(seen, 1), "lr": optimizer.param_groups[0]["lr"],
                           "img_per_s": epoch_images / max(epoch_train_s, 1e-9), "elapsed_s": elapsed,
                           "eta_s": elapsed / done * (total_steps - done) if done else None}
                    if writer:
                        run.append_metrics(row)
                        if on_step:
                            on_step(row)
                if stopping:
                    state["elapsed_s"] = time.perf_counter() - started
                    save_last("stopped")
                    if writer:
                        run.set_status("stopped", epoch=state["epoch"], epochs=recipe.epochs)
                    return {"status": "stopped", "epoch": epoch, "step": state["step_in_epoch"]}

            # End of epoch: totals over all ranks, validation, schedule, checkpoints.
            totals = torch.tensor([state["loss_sum"], state["correct"], state["seen"]],
                                  device=device, dtype=torch.float64)
            if world > 1:
                dist.all_reduce(totals)
            train_loss, train_acc = (totals[0] / totals[2]).item(), (totals[1] / totals[2]).item()
            if recipe.schedule == "plateau":
                plateau.step(train_loss)
            val_loss, val_acc = _validate(model, val_set, recipe)
            state.update(epoch=epoch + 1, step_in_epoch=0, loss_sum=0.0, correct=0, seen=0)
            state["elapsed_s"] = time.perf_counter() - started
            improved = val_acc is not None and val_acc > state["best_acc"]
            if improved:
                state["best_acc"] = val_acc
            row = {"kind": "epoch", "epoch": epoch + 1, "step": (epoch + 1) * steps_per_epoch, "train_loss": train_loss,
                   "train_acc": train_acc, "val_loss": val_loss, "val_acc": val_acc,
                   "lr": optimizer.param_groups[0]["lr"],
                   "img_per_s": epoch_images / max(epoch_train_s, 1e-9), "elapsed_s": state["elapsed_s"],
                   "eta_s": state["elapsed_s"] / (epoch + 1) * (recipe.epochs - epoch - 1)}
            if writer:
                if improved or not run.best.exists():
                    checkpoint.save(run.best, model, replace(card, training=summary("best")))
                # The row before the state: a kill between them replays this epoch and rewrites its row.
                run.append_metrics(row)
                save_last("running")
                run.set_status("running", epoch=epoch + 1, epochs=recipe.epochs)
                if on_epoch:
                    on_epoch(row)

    report = {"status": "finished", "epochs": recipe.epochs, "best_val_acc": state["best_acc"]}
    if writer:
        best_model, best_card = checkpoint.load(run.best)
        final = evaluate(best_model.to(device), val_set, recipe.normalization, flip_tta=recipe.flip_tta)
        report |= final.to_dict() | {"train_time_s": state["elapsed_s"], "device": device_name(device)}
        run.write_json(run.report, report)
        checkpoint.save(run.best, best_model, replace(best_card, training=summary("finished") | {
            "val_acc": final.accuracy, "per_class": final.per_class}))
        save_last("finished")
        run.set_status("finished", epoch=state["epoch"], epochs=recipe.epochs)
    return report


def _load_on_device(cfg: TrainConfig, device: torch.device, rank: int, world: int) -> tuple[ImageSet, ImageSet]:
    if world > 1 and rank != 0:
        dist.barrier()  # let rank 0 decode and cache the data first
    train_set, val_set = load_splits(cfg)
    if world > 1 and rank == 0:
        dist.barrier()
    return tuple(ImageSet(s.images.to(device), s.labels.to(device), s.classes) for s in (train_set, val_set))


def _sgd_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
              recipe: Recipe, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step (bf16 autocast on CUDA); returns the loss and the logits."""
    try:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=recipe.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    except torch.OutOfMemoryError:
        raise TrainError(f"out of memory at batch size {recipe.batch_size}; try a smaller --batch-size") from None
    return loss, logits


def _validate(model: torch.nn.Module, val_set: ImageSet, recipe: Recipe) -> tuple[float | None, float | None]:
    """Validation loss and accuracy; (None, None) without a validation split."""
    if not len(val_set):
        return None, None
    result = evaluate(model, val_set, recipe.normalization, flip_tta=recipe.flip_tta)
    return F.nll_loss(result.probs.clamp_min(1e-12).log(), result.labels.cpu()).item(), result.accuracy


def _stop_agreed(stop: StopRequest, world: int, device: torch.device) -> bool:
    """All ranks stop at the same step when any of them got the signal."""
    if world == 1:
        return stop.requested
    flag = torch.tensor([1.0 if stop.requested else 0.0], device=device)
    dist.all_reduce(flag)
    return flag.item() > 0


def load_config(run: Path | str) -> TrainConfig:
    path = RunFolder(run).config
    if not path.exists():
        raise TrainError(f"{run} is not a run folder: it has no config.json")
    return TrainConfig(**json.loads(path.read_text()))


def resumable(run: Path | str) -> bool:
    folder = RunFolder(run)
    return folder.config.exists() and folder.last.exists()


def format_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
