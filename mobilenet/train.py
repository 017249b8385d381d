"""The training engine: batched augmentation on the device, the loop, resume, DDP.

The data lives as one uint8 tensor on the training device. Every random choice is a function of
(seed, epoch, step), so a run resumed from its last checkpoint ends exactly like one that never stopped.
What a run writes, and where, is `mobilenet.runs`; what it is configured with, `mobilenet.config`.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import os
import signal
import threading
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F

from . import checkpoint
from .checkpoint import ModelCard, TrainingData
from .config import Recipe, TrainConfig
from .data import DataError, ImageSet, check_source, fingerprint, load, split_train_val
from .device import device_name, pick_device
from .distill import cache_folder, soft_targets
from .evaluate import Evaluation, evaluate
from .model import MobileNetV1, feature_sides
from .runs import DiskFull, MetricsRow, RunBusy, RunFolder, RunReport, RunState, disk_full


PROBE_IMAGES = 32  # what answers_are_numbers feeds the model at each epoch's end
STOP_AGREED_EVERY = 16  # steps: torchrun's processes stop within a second of a signal on a GPU


class TrainError(RuntimeError):
    """A training failure with a message fit for the user (bad data, out of memory, …)."""


# ---- random streams: each a pure function of the seed and where in training it is used ---------


# Generator seeds are taken modulo 2**64: the same streams as torch's own for every seed it accepts, and any
# integer seed (a date, 20240101) works.
def order_generator(seed: int, epoch: int) -> torch.Generator:
    """The shuffling of one epoch (on the CPU, so every device sees the same order)."""
    return torch.Generator().manual_seed((seed * 10007 + epoch) % 2**64)


def step_generator(seed: int, epoch: int, step: int, device: torch.device) -> torch.Generator:
    """The augmentation of one training step, so it never depends on history."""
    return torch.Generator(device=device).manual_seed(((seed * 1_000_003 + epoch) * 1_000_003 + step) % 2**64)


# ---- pieces of the loop ------------------------------------------------------------------------


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


def cutout(images: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """Zero a size×size square (clipped at the border) at a random centre of each normalised image."""
    n, _, h, w = images.shape
    device = images.device
    cy = torch.randint(0, h, (n, 1, 1), generator=generator, device=device)
    cx = torch.randint(0, w, (n, 1, 1), generator=generator, device=device)
    rows = torch.arange(h, device=device)[None, :, None] - cy + size // 2
    cols = torch.arange(w, device=device)[None, None, :] - cx + size // 2
    inside = (rows >= 0) & (rows < size) & (cols >= 0) & (cols < size)
    return images * ~inside[:, None]


class WeightAverage:
    """An exponential moving average of a model's weights and BN statistics, with the usual warm-up.

    BatchNorm running statistics are averaged like the weights (they were measured with nearby
    weights), so the average model is evaluated as it is, without a recalibration pass.
    """

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.updates = 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        mine, theirs = self.model.state_dict(), model.state_dict()
        floats = [k for k, v in mine.items() if v.is_floating_point()]
        torch._foreach_lerp_([mine[k] for k in floats], [theirs[k].detach() for k in floats], 1 - d)
        for k, v in mine.items():
            if not v.is_floating_point():
                v.copy_(theirs[k])

    def state_dict(self) -> dict:
        return {"weights": self.model.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["weights"])
        self.updates = state["updates"]


WARMUP_SHARE = 0.2  # of a run's steps, at most: a short run warms up for less than the recipe's epochs


def onecycle_lr(recipe: Recipe, step: int, total_steps: int, steps_per_epoch: int) -> float:
    """Linear warm-up over the recipe's warm-up epochs, or a fifth of the run if that is shorter (so a run of a few
    epochs still anneals), then linear decay to 0 at the end."""
    warmup = max(1, round(min(recipe.warmup_epochs * steps_per_epoch, WARMUP_SHARE * total_steps)))
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


# ---- the loop ----------------------------------------------------------------------------------


def load_splits(cfg: TrainConfig) -> tuple[ImageSet, ImageSet]:
    """The training images and the seeded validation split held out of them."""
    full = load(cfg.data, "train", cfg.resolution, root=cfg.data_root, download=cfg.download)
    return split_train_val(full, cfg.val_size, cfg.seed, cfg.subset)


@dataclass
class LoopState:
    """Where the loop is; saved in last.pt as a whole and restored on resume."""

    epoch: int = 0  # epochs completed
    step_in_epoch: int = 0
    loss_sum: float = 0.0  # this epoch's training totals so far
    correct: int = 0
    seen: int = 0
    best_acc: float = -1.0
    elapsed_s: float = 0.0
    devices: list = field(default_factory=list)  # [[device, epochs, seconds], …] in the order they trained


def device_label(name: str) -> str:
    """A device as a card names what trained on it: on a GPU the trainer computes in bf16 (autocast)."""
    return name if name.startswith("CPU") else f"{name}, bf16 autocast"


def count_epoch(state: LoopState, device: str) -> None:
    """The epoch just ended, and the time since the last one counted, on `device`."""
    seconds = state.elapsed_s - sum(d[2] for d in state.devices)
    if state.devices and state.devices[-1][0] == device:
        state.devices[-1][1] += 1
        state.devices[-1][2] += seconds
    else:
        state.devices.append([device, 1, seconds])


def train(
    cfg: TrainConfig,
    out: Path | str,
    resume: bool = False,
    overwrite: bool = False,
    on_epoch: Callable[[MetricsRow], None] | None = None,
    on_step: Callable[[MetricsRow], None] | None = None,
) -> RunReport | None:
    """Train into the run folder `out` (resuming its last.pt when asked); returns the final report, or None when
    the run was stopped (SIGTERM or SIGINT): its state is saved to resume from.

    A folder that already holds a run is refused unless resuming it or, explicitly, overwriting it.
    """
    folder = RunFolder(out)
    if not resume and folder.started and not overwrite:
        raise TrainError(f"{folder.path} already holds a run; resume it, choose another folder, or overwrite it")
    rank, world, device = _join_processes(cfg.device)
    training = None
    try:
        check_source(cfg.data, cfg.data_root, cfg.download)  # before the folder is made, when it is not there yet
        with folder.writing() if rank == 0 else nullcontext():
            training = Training(cfg, folder, device, rank, world, on_epoch, on_step)
            return training.run(resume)
    except RunBusy:
        raise  # the run is another live process's
    except Exception as e:
        if training is not None and training.replacing:
            raise  # the run it was to replace (--overwrite) is as it was, its status too
        if disk_full(e):
            e = DiskFull("disk full: the last saved state is kept; free space, then resume")
        status = folder.read_status()
        if rank == 0 and folder.path.exists() and (status is None or status.state is not RunState.FINISHED):
            folder.mark_failed(e.in_app if isinstance(e, DataError) else str(e))  # (a finished run stays finished)
        raise e
    finally:
        if world > 1:
            dist.destroy_process_group()


def process_rank() -> int:
    """This process's rank among torchrun's (0 when it runs alone): rank 0 writes the run and says how it ended."""
    return int(os.environ.get("RANK", "0"))


def _join_processes(asked: str) -> tuple[int, int, torch.device]:
    """This process's rank, the number of processes and its device: one process, or each of torchrun's."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return 0, 1, pick_device(asked)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = asked != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if use_cuda else "gloo")  # (its env:// rendezvous reads the same RANK)
    return process_rank(), dist.get_world_size(), torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")


class Training:
    """One run: its data, model, optimizer and LoopState. `run` is the loop, top to bottom."""

    def __init__(self, cfg: TrainConfig, folder: RunFolder, device: torch.device, rank: int, world: int,
                 on_epoch: Callable[[MetricsRow], None] | None, on_step: Callable[[MetricsRow], None] | None) -> None:
        self.cfg, self.recipe, self.folder = cfg, cfg.effective, folder
        self.device, self.rank, self.world, self.writer = device, rank, world, rank == 0
        self.on_epoch, self.on_step = on_epoch, on_step
        self.state = LoopState()
        self.targets: torch.Tensor | None = None  # the teachers' probabilities per training image (distillation)
        self.best_eval: Evaluation | None = None  # best.pt's validation, when this process made it
        self.last_eval: Evaluation | None = None  # the last epoch's validation, when this process made it
        self.validation_s = 0.0  # how long this process's last validation took (0: none yet)
        self.resumed_pace = 0.0  # img/s of the last row before a resume
        self.replacing = False  # the folder still holds the run this one replaces

    def run(self, resume: bool) -> RunReport | None:
        cfg, recipe = self.cfg, self.recipe
        if recipe.batch_size % self.world:
            raise TrainError(f"batch size {recipe.batch_size} must divide evenly over {self.world} processes")
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        # A run it replaces (--overwrite) stays, status and all, until this one's data and teachers proved usable.
        self.replacing = not resume and self.folder.started
        if self.writer and not self.replacing:
            saved = self.folder.read_status() if resume else None  # the epochs its last.pt holds, until it loads
            self.folder.set_status(RunState.LOADING, *((saved.epoch, saved.epochs) if saved else ()))
        self.train_set, self.val_set = _load_on_device(cfg, self.device, self.rank, self.world)
        self.data_digest = _data_digest(self.train_set, self.val_set)
        self.check_learnable()
        self.build_model()
        self.steps_per_epoch = max(1, len(self.train_set) // recipe.batch_size)
        self.total_steps = self.steps_per_epoch * recipe.epochs
        if resume:
            self.restore()
            if self.writer:  # the settings a resume may change (RESUMABLE_CHANGES) stay, once its data proved the same
                self.folder.write_config(cfg)
        else:
            if cfg.teachers:
                self.targets = soft_targets(cfg.teachers, self.train_set, self.card.data if len(self.val_set) else None,
                                            cache=cache_folder(cfg.data_root))
            if self.writer:
                self.folder.clear()
                self.folder.write_config(cfg)
            self.replacing = False
        state = self.state
        self.set_status(RunState.RUNNING)
        self.started = time.perf_counter() - state.elapsed_s
        with StopRequest() as stop:
            while state.epoch < recipe.epochs:
                order = torch.randperm(len(self.train_set), generator=order_generator(cfg.seed, state.epoch))
                self.begin_epoch(order.to(self.device))
                while state.step_in_epoch < self.steps_per_epoch:
                    self.step()
                    stopping = _stop_agreed(stop, self.world, self.device, self.global_step)
                    epoch_done = state.step_in_epoch == self.steps_per_epoch
                    if stopping or epoch_done or time.perf_counter() - self.last_log >= 1:
                        self.log_step()
                    if stopping:
                        self.stop()
                        return None
                self.end_epoch()
            return self.finish()  # a stop asked for now is too late: the run is done, its results are being saved

    # ---- setting up ------------------------------------------------------------------------------

    def check_learnable(self) -> None:
        """TrainError unless the data makes a classifier this network can learn."""
        cfg, train_set = self.cfg, self.train_set
        if len(train_set.classes) < 2:
            raise TrainError(f"{cfg.data} holds one class ({train_set.classes[0]}): a classifier needs at least "
                             f"two class folders")
        counts = torch.bincount(train_set.labels.cpu(), minlength=len(train_set.classes)).tolist()
        if empty := [name for name, count in zip(train_set.classes, counts) if not count]:
            held = " once the validation split is held out" if len(self.val_set) else ""
            raise TrainError(f"{cfg.data} leaves no training images of {', '.join(empty)}{held}: a class the model "
                             f"never sees cannot be learnt. Add readable images of it, or remove its folder")
        per_step = min(self.recipe.batch_size, len(train_set)) // self.world
        if per_step == 1 and min(feature_sides(cfg.stem, cfg.resolution)) == 1:
            raise TrainError("batch normalisation needs more than one value per channel, and at this input size the "
                             "last feature map is 1×1: train with a batch of at least 2 images (and per process)")

    def build_model(self) -> None:
        cfg, recipe = self.cfg, self.recipe
        torch.manual_seed(cfg.seed % 2**64)
        self.model = MobileNetV1(len(self.train_set.classes), cfg.alpha, cfg.stem).to(
            self.device, memory_format=torch.channels_last)
        self.optimizer = make_optimizer(self.model, recipe)
        self.plateau = make_plateau(self.optimizer)
        self.average = WeightAverage(self.model, recipe.ema) if recipe.ema else None
        self.shipped = self.average.model if self.average else self.model  # what is validated and saved as best.pt
        self.card = ModelCard(cfg.alpha, cfg.stem, cfg.resolution, self.train_set.classes,
                              recipe.normalization.mean, recipe.normalization.std, tta=recipe.tta,
                              data=TrainingData(cfg.data, fingerprint(cfg.data), cfg.val_size, cfg.seed,
                                                cfg.subset))
        self.train_model = torch.compile(self.model) if cfg.compile else self.model
        if self.world > 1:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = torch.nn.parallel.DistributedDataParallel(self.train_model, device_ids=device_ids)

    def restore(self) -> None:
        payload = checkpoint.read(self.folder.last)
        saved = payload.get("train_state")
        if not isinstance(saved, dict):
            raise TrainError(f"{self.folder.last} holds a model but no training state to resume from (a best.pt "
                             f"copied over it?)")
        self._check_same_settings(saved.get("config"))
        self._check_same_data(payload["card"], saved.get("data_digest"))
        try:
            self.model.load_state_dict(payload["state_dict"])
            self.optimizer.load_state_dict(saved["optimizer"])
            self.plateau.load_state_dict(saved["plateau"])
            self.state = LoopState(**saved["loop"])
            if self.average:
                self.average.load_state_dict(saved["ema"])
        except (KeyError, RuntimeError, TypeError, ValueError) as e:
            raise TrainError(f"{self.folder.last} is not the training state of the run {self.folder.config.name} "
                             f"describes ({str(e).splitlines()[0][:200]})") from None
        if self.rank:  # the interrupted epoch's sums so far are all ranks' (stop), counted once: by rank 0
            self.state.loss_sum, self.state.correct, self.state.seen = 0.0, 0, 0
        if self.state.best_acc >= 0 and not self.folder.best.exists():  # carried without it: from now on
            logging.getLogger(__name__).warning(
                "%s is missing: the best model is chosen again from the epochs still to validate", self.folder.best)
            self.state.best_acc = -1.0
        if self.state.epoch and not self.state.devices:  # saved before devices were counted: its card's device
            device = payload["card"].get("training", {}).get("device")
            if isinstance(device, str):
                self.state.devices = [[device_label(device), self.state.epoch, self.state.elapsed_s]]
        if "targets" in saved:
            self.targets = saved["targets"].to(self.device)
        if self.writer:
            self.folder.truncate_metrics(self.global_step, self.state.epoch)
        rows = self.folder.read_metrics()  # a run stopped on an epoch's last step ends it here with no step of its own
        self.resumed_pace = rows[-1].img_per_s if rows else 0.0

    def _check_same_settings(self, saved: object) -> None:
        """The run goes on with the settings it started with: config.json edited meanwhile (by hand, or a config
        from elsewhere) would change its schedule or its model halfway. A state saved before configs were kept in
        it is not checked."""
        if saved is None:
            return
        try:
            differences = TrainConfig.from_dict(saved).setting_differences(self.cfg)
        except (TypeError, ValueError):
            raise TrainError(f"{self.folder.last} holds a malformed record of its settings") from None
        if differences:
            changes = "; ".join(f"{name} {a} when it started, {b} now" for name, (a, b) in differences.items())
            raise TrainError(f"{self.folder.config} no longer describes the run {self.folder.last.name} holds: "
                             f"{changes}. Put those settings back, or start a new run")

    def _check_same_data(self, saved_card: dict, saved_digest: str | None) -> None:
        """The saved state goes on only with the images it trained on: other images re-draw the validation split
        (the model would be scored on images it trained on) and misalign distillation targets. Other files beside
        them (a .DS_Store, a README, a test split) change nothing."""
        classes = tuple(saved_card["classes"])
        if saved_digest is not None:
            changed = saved_digest != self.data_digest
        else:  # a run saved before the digest was: its source's fingerprint
            saved = (saved_card.get("data") or {}).get("fingerprint")
            changed = saved is not None and saved != self.card.data.fingerprint
        if changed or classes != self.train_set.classes:
            what = (f"its classes changed ({', '.join(classes)} → {', '.join(self.train_set.classes)})"
                    if classes != self.train_set.classes else "its images changed")
            raise TrainError(f"{self.cfg.data}: {what} since this run started; resuming would mix held-out and "
                             f"training images. Put the data back as it was, or start a new run")

    # ---- one step, one epoch -----------------------------------------------------------------------

    @property
    def global_step(self) -> int:
        return self.state.epoch * self.steps_per_epoch + self.state.step_in_epoch

    def begin_epoch(self, order: torch.Tensor) -> None:
        self.order = order
        self.model.train()
        # This epoch's loss sum, correct and seen, added step by step in float64 from the saved totals: the same sums
        # whenever the rows are logged or the run resumed (the plateau schedule reads them).
        state = self.state
        self.totals = torch.tensor([state.loss_sum, state.correct, state.seen], dtype=torch.float64,
                                   device=self.device)
        self.epoch_images = 0
        self.epoch_steps = 0
        self.epoch_started = self.last_log = time.perf_counter()

    def step(self) -> None:
        cfg, recipe, state = self.cfg, self.recipe, self.state
        s = state.step_in_epoch
        index = self.order[s * recipe.batch_size:(s + 1) * recipe.batch_size][self.rank::self.world]
        g = step_generator(cfg.seed, state.epoch, s, self.device)
        x = recipe.normalization.apply(augment(self.train_set.images[index], g))
        if recipe.cutout:
            x = cutout(x, recipe.cutout, g)
        y = self.train_set.labels[index]
        soft = None if self.targets is None else (self.targets[index], cfg.distill)
        if recipe.schedule == "onecycle":
            for group in self.optimizer.param_groups:
                group["lr"] = onecycle_lr(recipe, self.global_step, self.total_steps, self.steps_per_epoch)
        loss, logits = _sgd_step(self.train_model, self.optimizer, x.contiguous(memory_format=torch.channels_last), y,
                                 soft, recipe, self.device)
        if self.average:
            self.average.update(self.model)
        hits = (logits.argmax(1) == y).sum()
        # full_like, not torch.tensor(len(y), device=…): a copy from the host waits for the GPU at every step
        self.totals += torch.stack([loss.detach() * len(y), hits, torch.full_like(hits, len(y))]).double()
        state.step_in_epoch += 1
        self.epoch_steps += 1
        self.epoch_images += len(y) * self.world

    def images_per_second(self) -> float:
        """Training speed this epoch, from the wall clock after the device has finished its queued work."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return self.epoch_images / max(time.perf_counter() - self.epoch_started, 1e-9)

    def validates(self, epoch: int) -> bool:
        """Whether the end of this (1-based) epoch validates: every val_every epochs, and after the last."""
        return epoch % self.cfg.val_every == 0 or epoch == self.recipe.epochs

    def eta(self, trained_until: float) -> float:
        """Seconds left: the steps left at this epoch's pace (its training up to perf_counter() time trained_until),
        and the validations left at the last one's length. This process's own: after a resume on another device, or
        a pause, the whole run's average would mislead."""
        if self.epoch_steps:
            step_s = (trained_until - self.epoch_started) / self.epoch_steps
        else:  # resumed at an epoch's end: the pace it had when it stopped
            step_s = self.recipe.batch_size / self.resumed_pace if self.resumed_pace else 0.0
        validations = sum(map(self.validates, range(self.state.epoch + 1, self.recipe.epochs + 1)))
        validation_s = self.validation_s or self._validation_guess(step_s)
        return step_s * (self.total_steps - self.global_step) + validation_s * validations

    def _validation_guess(self, step_s: float) -> float:
        """Before this process's first validation: its views at a quarter of a training image's time each (α=1
        on the 2-core CPU: 30,000 flip-translate views in 45 s beside 170 training images a second)."""
        views = len(self.val_set) * self.recipe.inference.views_per_image
        return step_s / self.recipe.batch_size * views / 4

    def log_step(self) -> None:
        state = self.state
        img_per_s = self.images_per_second()
        before = state.loss_sum, state.correct, state.seen
        state.loss_sum, correct, seen = self.totals.tolist()
        state.correct, state.seen = int(correct), int(seen)
        loss_sum, correct, seen = (now - then for now, then in zip((state.loss_sum, state.correct, state.seen), before))
        self.last_log = time.perf_counter()
        done = self.global_step
        elapsed = self.last_log - self.started
        row = MetricsRow("step", state.epoch + 1, done, loss_sum / max(seen, 1), correct / max(seen, 1),
                         self.optimizer.param_groups[0]["lr"], img_per_s, elapsed, self.eta(self.last_log),
                         total_steps=self.total_steps)
        if self.writer:
            self.folder.append_metrics(row)
            if self.on_step:
                self.on_step(row)

    def end_epoch(self) -> None:
        """Totals over all ranks, the schedule, validation, then best.pt, the row and last.pt."""
        recipe, state = self.recipe, self.state
        img_per_s = self.images_per_second() if self.epoch_steps else self.resumed_pace
        totals = torch.tensor([state.loss_sum, state.correct, state.seen], device=self.device, dtype=torch.float64)
        if self.world > 1:
            dist.all_reduce(totals)
        train_loss, train_acc = (totals[0] / totals[2]).item(), (totals[1] / totals[2]).item()
        if not math.isfinite(train_loss) or not self.answers_are_numbers():
            raise TrainError(f"training diverged in epoch {state.epoch + 1}: the model's answers are no longer numbers "
                             f"(NaN or infinite), so nothing of this epoch is saved; start a new run with a lower "
                             f"learning rate (--lr {self.recipe.lr:g} now)")
        if recipe.schedule == "plateau":
            self.plateau.step(train_loss)
        trained_until = time.perf_counter()
        validation = _validate(self.shipped, self.val_set, recipe) if self.validates(state.epoch + 1) else None
        if validation is not None:
            self.validation_s = time.perf_counter() - trained_until
        val_loss, val_acc = (_nll(validation), validation.accuracy) if validation is not None else (None, None)
        state.epoch, state.step_in_epoch, state.loss_sum, state.correct, state.seen = state.epoch + 1, 0, 0.0, 0, 0
        state.elapsed_s = time.perf_counter() - self.started
        count_epoch(state, device_label(device_name(self.device)))
        if state.epoch == recipe.epochs:
            self.last_eval = validation
        improved = val_acc is not None and val_acc > state.best_acc
        if improved:
            state.best_acc, self.best_eval = val_acc, validation
        row = MetricsRow("epoch", state.epoch, self.global_step, train_loss, train_acc,
                         self.optimizer.param_groups[0]["lr"], img_per_s, state.elapsed_s,
                         self.eta(trained_until), val_loss, val_acc, self.total_steps)
        if self.writer:
            if improved or not len(self.val_set):  # without a validation split the latest weights are the model
                card = replace(self.card, training=self.summary(RunState.RUNNING))
                checkpoint.save(self.folder.best, self.shipped, card)
            # The row before the state: a kill between them replays this epoch and rewrites its row.
            self.folder.append_metrics(row)
            self.save_last(RunState.RUNNING)
            self.set_status(RunState.RUNNING)
            if self.on_epoch:
                self.on_epoch(row)

    # ---- saving, stopping, finishing ---------------------------------------------------------------

    def answers_are_numbers(self) -> bool:
        """Whether the model to ship answers a few training images with numbers. A diverged run's training loss can
        stay finite (batch statistics rescale the exploding activations) while its saved model answers NaN."""
        model, was_training = self.shipped, self.shipped.training
        model.eval()
        with torch.no_grad():
            images = self.recipe.normalization.apply(self.train_set.images[:PROBE_IMAGES])
            answers = model(images.contiguous(memory_format=torch.channels_last))
        model.train(was_training)
        return bool(answers.isfinite().all())

    def summary(self, status: RunState) -> dict:
        """The card's account of this training."""
        cfg, recipe, state = self.cfg, self.recipe, self.state
        return {"data": Path(cfg.data).name,  # by name, not this machine's path: cards ship
                "recipe": cfg.recipe, "epochs": state.epoch, "planned_epochs": recipe.epochs,
                "batch_size": recipe.batch_size, "lr": recipe.lr, "label_smoothing": recipe.label_smoothing,
                "weight_decay": recipe.weight_decay, "ema": recipe.ema, "cutout": recipe.cutout, "seed": cfg.seed,
                "val_size": cfg.val_size, "subset": cfg.subset,
                **({"teachers": [Path(p).name for p in cfg.teachers], "distill": cfg.distill} if cfg.teachers else {}),
                "val_acc": state.best_acc if state.best_acc >= 0 else None,
                "train_time_s": round(state.elapsed_s, 1), "device": device_name(self.device),
                "devices": [[name, epochs, round(seconds, 1)] for name, epochs, seconds in state.devices],
                "status": status.value}

    def set_status(self, state: RunState) -> None:
        if self.writer:
            self.folder.set_status(state, self.state.epoch, self.recipe.epochs)

    def save_last(self, status: RunState) -> None:
        if self.writer:
            train_state = {"optimizer": self.optimizer.state_dict(), "plateau": self.plateau.state_dict(),
                           "loop": asdict(self.state), "data_digest": self.data_digest, "config": self.cfg.to_dict()}
            if self.average:
                train_state["ema"] = self.average.state_dict()
            if self.targets is not None:
                train_state["targets"] = self.targets
            checkpoint.save(self.folder.last, self.model, replace(self.card, training=self.summary(status)),
                            train_state)

    def stop(self) -> None:
        state = self.state
        if self.world > 1:  # the epoch's sums so far over all ranks: rank 0 saves them, the others resume from 0
            totals = self.totals.clone()
            dist.all_reduce(totals)
            state.loss_sum, correct, seen = totals.tolist()
            state.correct, state.seen = int(correct), int(seen)
        state.elapsed_s = time.perf_counter() - self.started
        self.save_last(RunState.STOPPED)
        self.set_status(RunState.STOPPED)

    def finish(self) -> RunReport:
        """The final report: the best model evaluated on the validation split, also written into its card. Without
        a validation split there is nothing to score (the model is the last epoch's): no accuracy, not 0%."""
        best_acc = self.state.best_acc if self.state.best_acc >= 0 else None
        report = RunReport(self.recipe.epochs, best_acc)
        if self.writer:
            best_model, best_card = checkpoint.load(self.folder.best)
            report = replace(report, train_time_s=self.state.elapsed_s, device=device_name(self.device))
            training = self.summary(RunState.FINISHED)
            if len(self.val_set):
                final = self.best_eval or evaluate(best_model.to(self.device), self.val_set, best_card.inference)
                last = self.last_eval or _validate(self.shipped, self.val_set, self.recipe)
                report = replace(report, validation=final, last_epoch=last)
                training |= {"val_acc": final.accuracy, "per_class": final.per_class,
                             "epochs": best_card.training.get("epochs", self.state.epoch)}  # its weights' epoch
            self.folder.write_json(self.folder.report, report.to_dict())
            checkpoint.save(self.folder.best, best_model, replace(best_card, training=training))
            self.save_last(RunState.FINISHED)
            self.set_status(RunState.FINISHED)
        return report


def _data_digest(*sets: ImageSet) -> str:
    """What a run trains and validates on: classes, labels and pixels (under a second for 50,000 CIFAR-10 images)."""
    h = hashlib.blake2b(digest_size=16)
    for images in sets:
        h.update("\n".join(images.classes).encode())
        h.update(images.labels.cpu().numpy().tobytes())
        h.update(images.images.cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _load_on_device(cfg: TrainConfig, device: torch.device, rank: int, world: int) -> tuple[ImageSet, ImageSet]:
    if world > 1 and rank != 0:
        dist.barrier()  # let rank 0 decode and cache the data first
    train_set, val_set = load_splits(cfg)
    if world > 1 and rank == 0:
        dist.barrier()
    return tuple(ImageSet(s.images.to(device), s.labels.to(device), s.classes) for s in (train_set, val_set))


def _sgd_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
              soft: tuple[torch.Tensor, float] | None, recipe: Recipe,
              device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step (bf16 autocast on CUDA); returns the loss and the logits.

    soft: the teachers' probabilities for the batch and their weight against the (smoothed) labels.
    """
    try:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(x).float()
            loss = F.cross_entropy(logits, y, label_smoothing=recipe.label_smoothing)
            if soft is not None:
                targets, weight = soft
                loss = (1 - weight) * loss + weight * F.cross_entropy(logits, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    except torch.OutOfMemoryError:
        raise TrainError(f"out of memory at batch size {recipe.batch_size}; try a smaller --batch-size") from None
    return loss, logits


def _validate(model: torch.nn.Module, val_set: ImageSet, recipe: Recipe) -> Evaluation | None:
    """The model on the validation split, fed as it will be served; None without a validation split."""
    return evaluate(model, val_set, recipe.inference) if len(val_set) else None


def _nll(result: Evaluation) -> float:
    return F.nll_loss(result.probs.clamp_min(1e-12).log(), result.labels).item()


def _stop_agreed(stop: StopRequest, world: int, device: torch.device, step: int) -> bool:
    """All ranks stop at the same step when any of them got the signal: they agree every STOP_AGREED_EVERY steps,
    since agreeing waits for the device to finish its queued work."""
    if world == 1:
        return stop.requested
    if step % STOP_AGREED_EVERY:
        return False
    flag = torch.tensor([1.0 if stop.requested else 0.0], device=device)
    dist.all_reduce(flag)
    return flag.item() > 0
