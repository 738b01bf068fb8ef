"""Training a JMVAE: the loop, validation, sample grids, checkpoints, resume and DDP.

One process trains on one device. Under `torchrun --nproc-per-node N -m jmvae_cli train ...` each of N processes
takes a shard of every epoch and gradients are averaged by DistributedDataParallel; rank 0 alone logs and writes.
"""

import copy
import json
import math
import os
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from jmvae_cli.checkpoint import load_model, load_train_state, save_model, save_train_state
from jmvae_cli.console import console
from jmvae_cli.data import VAL_FRACTION, FaceData, Preprocess, load_data
from jmvae_cli.errors import JmvaeError
from jmvae_cli.images import from_uint8_array, write_image
from jmvae_cli.gan import Discriminator, discriminator_loss, generator_loss
from jmvae_cli.model import JMVAEConfig, output_to_pixels, pixels_to_input
from jmvae_cli.registry import build
from jmvae_cli.runtime import Precision, pick_device

SHOWN = ("rec_x", "rec_w", "kl", "gen", "disc")  # loss terms on the progress bar
MODEL_FILE = "model.safetensors"
STATE_FILE = "train_state.safetensors"
METRICS_FILE = "metrics.jsonl"


class TrainingError(JmvaeError):
    pass


class Interrupted(JmvaeError):
    """Ctrl-C during training: raised after the checkpoint is saved."""

    exit_code = 130


@dataclass
class TrainOptions:
    data: list[Path]
    out: Path
    epochs: int = 20
    batch_size: int = 100  # the authors'
    lr: float = 5e-4  # peak of a cosine schedule (the authors used a constant 1e-4)
    beta1: float = 0.5  # the authors'
    alpha: float = 0.1  # the paper's
    cross_weight: float = 0.0  # the paper's objective has no cross-modal term (model.py)
    objective: str = "jmvae-kl"
    model: str = "jmvae"  # or a baseline: vae, cvae, cmma, classifier
    gan: bool = False  # add an adversarial term for the image decoder (gan.py)
    gan_weight: float = 0.1  # the adversarial term's weight per pixel, against the likelihood's nats
    gan_lr: float = 2e-4
    latent_dim: int = 128
    device: str = "auto"
    precision: str = "auto"
    seed: int = 0
    resume: bool = False
    init: Path | None = None  # start from this model file's weights (fine-tuning), with a fresh optimizer
    max_images: int | None = None
    val_fraction: float = VAL_FRACTION
    warmup_epochs: float = 1.0  # KL warm-up: the prior KL's weight rises linearly from 0 to 1 over this many epochs
    flip: bool = True  # random horizontal flips: none of the CelebA attributes is left/right
    ema: float = 0.0  # decay per step of an exponential moving average of the weights, which is validated and saved
    time_limit: float | None = None  # minutes; the learning-rate schedule then runs to this wall time
    cache_dir: Path | None = None
    val_images: int = 5000  # validation per epoch looks at most this many images
    checkpoint_every: float = 60.0  # seconds; epochs can be a few seconds long on a GPU, and a save is ~100 MB
    progress: bool = True
    arch: dict = field(default_factory=dict)  # other JMVAEConfig fields (widths...), for small models in tests

    def to_dict(self) -> dict:
        d = asdict(self)
        d["data"] = [str(p) for p in self.data]
        d["out"] = str(self.out)
        d["cache_dir"] = str(self.cache_dir) if self.cache_dir else None
        d["init"] = str(self.init) if self.init else None
        return d


# ----------------------------------------------------------------------------- distributed set-up


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_name: str) -> Dist:
    """Under torchrun the environment names this process's rank; otherwise we are the only process."""
    if "RANK" not in os.environ:
        return Dist()
    d = Dist(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))
    use_cuda = device_name in ("auto", "cuda") and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(d.local_rank)
    dist.init_process_group("nccl" if use_cuda else "gloo")
    return d


# ----------------------------------------------------------------------------- batches


def batch_tensors(data: FaceData, idx: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    idx = np.sort(idx)  # sorted reads are sequential in the memory-mapped cache
    x = pixels_to_input(torch.from_numpy(data.images[idx]).to(device, non_blocking=True))  # (B, 3, 64, 64)
    w = torch.from_numpy(data.attrs[idx]).to(device).float()  # (B, A)
    return x, w


def epoch_batches(train_idx: np.ndarray, batch_size: int, seed: int, epoch: int, d: Dist) -> list[np.ndarray]:
    """This rank's batches for one epoch. Every rank gets the same number of full batches: DDP needs the steps in
    lockstep, and a batch of one would break batch norm."""
    perm = np.random.default_rng([seed, epoch]).permutation(train_idx)
    per_rank = len(perm) // (d.world * batch_size) * batch_size
    mine = perm[d.rank * per_rank : (d.rank + 1) * per_rank]
    return [mine[i : i + batch_size] for i in range(0, per_rank, batch_size)]


# ----------------------------------------------------------------------------- validation and pictures


@torch.no_grad()
def validate(model, data: FaceData, idx: np.ndarray, device: torch.device, prec: Precision, batch_size=250) -> dict:
    """Loss terms, bits per dimension of the bound, and img->attr accuracy (through q(z|x) for a JMVAE: the mean of
    q, probabilities cut at 0.5), averaged over the images `idx`."""
    model.eval()
    sums: dict[str, float] = {}
    correct = torch.zeros(data.attrs.shape[1], dtype=torch.float64)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(0)  # the same z samples every epoch, so the validation curve is not noise
        for i in range(0, len(idx), batch_size):
            x, w = batch_tensors(data, idx[i : i + batch_size], device)
            with prec.autocast():
                terms = model(x, w)
                if model.infers_attributes:
                    correct += ((model.attrs_from_images(x) > 0.5).float() == w).double().sum(0).cpu()  # (A,)
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v) * len(x)
    model.train()
    n = max(len(idx), 1)
    out = {k: v / n for k, v in sums.items()}
    if "elbo" in out:
        out["bits_per_dim"] = -out["elbo"] / (3 * model.cfg.image_size**2 * math.log(2))
    if model.infers_attributes:
        per_attr = (correct / n).tolist()
        out["attr_acc"] = float(np.mean(per_attr))
        out["attr_acc_per"] = dict(zip(data.attr_names, per_attr))
    return out


@torch.no_grad()
def sample_grid(model, data: FaceData, idx: np.ndarray, device: torch.device) -> np.ndarray | None:
    """Faces in the top row, the model's own picture of them below (see its grid_rows). (H, W, 3) uint8."""
    model.eval()
    x, w = batch_tensors(data, idx, device)
    rows = [x, *model.grid_rows(x, w)]
    model.train()
    if len(rows) == 1:
        return None
    tiles = output_to_pixels(torch.cat(rows)).cpu().numpy()  # (R*B, 64, 64, 3)
    r, n, s = len(rows), len(idx), tiles.shape[1]
    return tiles.reshape(r, n, s, s, 3).transpose(0, 2, 1, 3, 4).reshape(r * s, n * s, 3)


# ----------------------------------------------------------------------------- the loop


def lr_at(step: int, progress: float, peak: float, warmup_steps: int = 200) -> float:
    """A short linear warm-up (Adam's early steps are noisy with batch norm), then cosine decay over the run's
    progress in [0, 1] to a tenth of the peak."""
    cosine = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return peak * min(1.0, (step + 1) / warmup_steps) * cosine


def describe(cfg: JMVAEConfig, opts: TrainOptions) -> str:
    name = cfg.objective if cfg.model == "jmvae" else cfg.model
    return name + ("-gan" if opts.gan else "")


def _check_out_dir(opts: TrainOptions) -> None:
    state = opts.out / STATE_FILE
    if opts.resume and not state.exists():
        raise JmvaeError(f"--resume: no {STATE_FILE} in {opts.out} to resume from")
    if not opts.resume and state.exists():
        raise JmvaeError(f"{opts.out} already holds a trained model: pass --resume to continue it, or another --out")


@dataclass
class Start:
    """Where a run begins: a fresh model, a model file to fine-tune (--init), or a saved run (--resume)."""

    cfg: JMVAEConfig
    states: dict[str, dict] = field(default_factory=dict)  # module state_dicts by name
    optimizer_states: dict[str, dict] = field(default_factory=dict)
    step: int = 0
    epochs_done: int = 0
    train_seconds: float = 0.0


def starting_point(opts: TrainOptions, attr_names: list[str]) -> Start:
    if opts.resume:
        states, optimizer_states, meta = load_train_state(opts.out / STATE_FILE)
        if ("discriminator" in states) != opts.gan:
            was = "with" if not opts.gan else "without"
            raise JmvaeError(f"--resume: {opts.out} was trained {was} --gan; resume it the same way")
        if meta["attr_names"] != attr_names:
            raise JmvaeError(f"--resume: the data's attributes differ from those the model in {opts.out} knows")
        if "ema" in states and not opts.ema:
            raise JmvaeError(f"--resume: {opts.out} was trained with --ema; resume it the same way")
        cfg = JMVAEConfig.from_dict(meta["config"])
        return Start(cfg, states, optimizer_states, meta["step"], meta["epochs_done"], meta.get("train_seconds", 0.0))
    if opts.init:
        loaded = load_model(opts.init)
        if loaded.attr_names != attr_names:
            raise JmvaeError(f"--init: {opts.init} was trained on other attributes than this data's")
        # Fine-tuning keeps the architecture; the weights of the objective's terms may change, the objective may not.
        weights = {"alpha": opts.alpha, "cross_weight": opts.cross_weight}
        cfg = JMVAEConfig.from_dict({**loaded.model.cfg.to_dict(), **weights})
        return Start(cfg, states={"model": loaded.model.state_dict()})
    cfg = JMVAEConfig(
        model=opts.model,
        n_attrs=len(attr_names),
        latent_dim=opts.latent_dim,
        objective=opts.objective,
        alpha=opts.alpha,
        cross_weight=opts.cross_weight,
        **opts.arch,
    )
    return Start(cfg)


def build_modules(cfg: JMVAEConfig, opts: TrainOptions, device: torch.device, prec: Precision, start: Start):
    """The model (with --gan the discriminator, with --ema the average of the model) and their Adam optimizers,
    loaded from `start`."""
    model = build(cfg).to(device, memory_format=prec.memory_format)
    modules = {"model": model}
    optimizers = {"optimizer": torch.optim.Adam(model.parameters(), lr=opts.lr, betas=(opts.beta1, 0.999))}
    if opts.gan:
        modules["discriminator"] = Discriminator().to(device, memory_format=prec.memory_format)
        optimizers["disc_optimizer"] = torch.optim.Adam(
            modules["discriminator"].parameters(), lr=opts.gan_lr, betas=(0.5, 0.999)
        )
    for name, state in start.states.items():
        if name != "ema":
            modules[name].load_state_dict(state)
    if opts.ema:  # a fine-tune, or a resume of a run without an average, starts averaging from the model
        modules["ema"] = copy.deepcopy(model).eval()
        if "ema" in start.states:
            modules["ema"].load_state_dict(start.states["ema"])
    for name, state in start.optimizer_states.items():
        optimizers[name].load_state_dict(state)
    return modules, optimizers


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """Polyak averaging, ema <- decay * ema + (1 - decay) * model, batch-norm statistics included: the average of
    the last few thousand steps smooths out the noise of the final ones, which the last step alone carries."""
    for e, p in zip(ema.state_dict().values(), model.state_dict().values()):
        if e.is_floating_point():
            e.lerp_(p, 1 - decay)
        else:
            e.copy_(p)


@contextmanager
def sigterm_as_interrupt():
    """`kill`, `timeout` and cluster schedulers stop a job with SIGTERM: save and stop as for Ctrl-C, instead of
    losing the work since the last checkpoint."""
    if threading.current_thread() is not threading.main_thread():  # signal handlers live in the main thread only
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def train(opts: TrainOptions) -> dict:
    """Train (or resume) a model as `opts` says; returns the last epoch's metrics."""
    d = init_distributed(opts.device)
    try:
        with sigterm_as_interrupt():
            return _train(opts, d)
    finally:
        if d.world > 1:
            dist.destroy_process_group()


def _train(opts: TrainOptions, d: Dist) -> dict:
    device = pick_device(opts.device)
    if device.type == "cuda" and d.world > 1:
        device = torch.device("cuda", d.local_rank)
    prec = Precision.choose(device, opts.precision)
    _check_out_dir(opts)
    if d.world > 1 and (opts.time_limit or opts.gan):
        raise JmvaeError("--time-limit and --gan work in single-process runs only (under torchrun, set --epochs)")
    if opts.gan and opts.model != "jmvae":
        raise JmvaeError(f"--gan trains a JMVAE's image decoder; it does not apply to --model {opts.model}")
    torch.manual_seed(opts.seed + d.rank)

    pre = Preprocess()
    load = dict(preprocess=pre, val_fraction=opts.val_fraction, cache_dir=opts.cache_dir, max_images=opts.max_images)
    if d.main:  # rank 0 decodes and caches; the others wait, then read its cache
        data = load_data(opts.data, progress=opts.progress, **load)
    if d.world > 1:
        dist.barrier()
    if not d.main:
        data = load_data(opts.data, progress=False, **load)
    train_idx, val_idx = data.indices("train"), data.indices("val")
    if len(train_idx) < opts.batch_size * d.world:
        raise JmvaeError(f"only {len(train_idx)} training images: fewer than one batch of {opts.batch_size}")

    start = starting_point(opts, data.attr_names)
    cfg, step, epochs_done, elapsed_before = start.cfg, start.step, start.epochs_done, start.train_seconds
    if epochs_done >= opts.epochs:
        raise JmvaeError(f"{opts.out} is already trained for {epochs_done} epochs: raise --epochs to train on")
    modules, optimizers = build_modules(cfg, opts, device, prec, start)
    model, ema = modules["model"], modules.get("ema")
    final = ema if ema is not None else model  # what is validated, pictured and saved as the model
    optimizer, disc = optimizers["optimizer"], modules.get("discriminator")
    ddp = torch.nn.parallel.DistributedDataParallel(model) if d.world > 1 else model
    n_pixels = 3 * cfg.image_size**2

    steps_per_epoch = len(train_idx) // (d.world * opts.batch_size)
    total_steps = steps_per_epoch * opts.epochs
    warmup_steps = max(1, int(opts.warmup_epochs * steps_per_epoch))
    grid_idx = val_idx[:8] if len(val_idx) >= 8 else train_idx[:8]
    meta = {
        "attr_names": data.attr_names,
        "preprocess": pre.to_dict(),
        "train": opts.to_dict(),
        "data": {"train_images": int(len(train_idx)), "val_images": int(len(val_idx)), "skipped": data.skipped},
    }
    if d.main:
        opts.out.mkdir(parents=True, exist_ok=True)
        (opts.out / "samples").mkdir(exist_ok=True)
        console.print(
            f"[bold]jmvae train[/]: {len(train_idx)} training / {len(val_idx)} validation images, "
            f"{len(data.attr_names)} attributes, {describe(cfg, opts)}, "
            f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, "
            f"{device.type} {prec.name}" + (f", {d.world} processes" if d.world > 1 else "")
        )

    last_save = time.monotonic()

    def save(epochs_done: int, train_seconds: float, metrics: dict | None, force: bool = True) -> None:
        nonlocal last_save
        if not d.main or not (force or time.monotonic() - last_save >= opts.checkpoint_every):
            return
        last_save = time.monotonic()
        m = {**meta, "step": step, "epochs_done": epochs_done, "train_seconds": train_seconds, "metrics": metrics}
        save_train_state(opts.out / STATE_FILE, modules, optimizers, m)
        save_model(opts.out / MODEL_FILE, final, m)

    progress = Progress(
        TextColumn("[bold]epoch {task.fields[epoch]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[terms]}"),
        TextColumn("{task.fields[speed]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not (d.main and opts.progress),
    )
    t_start = time.monotonic()
    metrics: dict = {}
    with progress:
        task = progress.add_task("train", total=total_steps, completed=step, epoch="", terms="", speed="")
        try:
            for epoch in range(epochs_done, opts.epochs):
                sums: dict[str, float] = {}
                n_steps, t_epoch = 0, time.monotonic()
                for idx in epoch_batches(train_idx, opts.batch_size, opts.seed, epoch, d):
                    x, w = batch_tensors(data, idx, device)
                    if opts.flip:
                        flip = torch.rand(len(x), device=device) < 0.5
                        x = torch.where(flip[:, None, None, None], x.flip(3), x)
                    elapsed = time.monotonic() - t_start + elapsed_before
                    frac = step / total_steps
                    if opts.time_limit:
                        frac = max(frac, elapsed / (60 * opts.time_limit))
                    for g in optimizer.param_groups:
                        g["lr"] = lr_at(step, frac, opts.lr, warmup_steps=max(1, min(200, total_steps // 10)))
                    beta = min(1.0, (step + 1) / warmup_steps)
                    with prec.autocast():
                        terms = ddp(x, w, beta)
                        loss = terms["loss"]
                        if disc is not None:
                            # Only the image decoder learns from the adversary: z from q(z|w), the route of
                            # attr2img and edit, detached from its encoder.
                            fake = model.decode_x(model.q_w(w).sample().detach())[0]  # (B, 3, 64, 64)
                            terms["gen"] = generator_loss(disc(fake))
                            loss = loss + opts.gan_weight * n_pixels * terms["gen"]
                    if not torch.isfinite(loss):
                        if prec.dtype is not None and opts.precision == "auto" and d.world == 1:
                            # bf16's short mantissa can overflow where fp32 would not: keep going in fp32.
                            prec = Precision(device, None)
                            if d.main:
                                console.print(f"[yellow]non-finite loss in bf16 at step {step}: continuing in fp32")
                            continue
                        raise TrainingError(
                            f"the loss became {float(loss.detach())} at step {step} (epoch {epoch + 1}); training stopped. "
                            f"The last good checkpoint in {opts.out} is intact (epoch {epochs_done}); "
                            f"try a lower --lr or --precision fp32"
                        )
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    if ema is not None:  # the usual warm-up: early on the average follows the model closely
                        update_ema(ema, model, min(opts.ema, (1 + step) / (10 + step)))
                    if disc is not None:
                        with prec.autocast():
                            terms["disc"] = discriminator_loss(disc(x), disc(fake.detach()))
                        optimizers["disc_optimizer"].zero_grad(set_to_none=True)
                        terms["disc"].backward()
                        optimizers["disc_optimizer"].step()
                    step += 1
                    n_steps += 1
                    for k, v in terms.items():
                        sums[k] = sums.get(k, 0.0) + v.detach()
                    if step % 10 == 0 or n_steps == steps_per_epoch:
                        ips = n_steps * len(x) * d.world / (time.monotonic() - t_epoch)
                        shown = " ".join(f"{k} {float(v) / n_steps:.4g}" for k, v in sums.items() if k in SHOWN)
                        progress.update(task, completed=step, epoch=epoch + 1, terms=shown, speed=f"{ips:.0f} img/s")
                    if opts.time_limit and elapsed > 60 * opts.time_limit:
                        break

                epoch_seconds = time.monotonic() - t_epoch
                epochs_done = epoch + 1
                train_seconds = time.monotonic() - t_start + elapsed_before
                out_of_time = bool(opts.time_limit) and train_seconds > 60 * opts.time_limit
                if d.main:
                    val = validate(final, data, val_idx[: opts.val_images], device, prec)
                    metrics = {
                        "epoch": epochs_done,
                        "step": step,
                        "lr": optimizer.param_groups[0]["lr"],
                        "precision": prec.name,
                        "images_per_s": n_steps * opts.batch_size * d.world / epoch_seconds,
                        "train": {k: float(v) / max(n_steps, 1) for k, v in sums.items()},
                        "val": val,
                    }
                    with open(opts.out / METRICS_FILE, "a") as f:
                        f.write(json.dumps(metrics) + "\n")
                    grid = sample_grid(final, data, grid_idx, device)
                    if grid is not None:
                        write_image(from_uint8_array(grid), opts.out / "samples" / f"epoch_{epochs_done:03d}.png")
                    save(epochs_done, train_seconds, metrics, force=epochs_done == opts.epochs or out_of_time)
                    shown = [f"{k} {val[k]:.4f}" for k in ("bits_per_dim", "rec_w", "attr_acc") if k in val]
                    progress.console.print(
                        f"epoch {epochs_done}: val {', '.join(shown)}, {metrics['images_per_s']:.0f} img/s"
                    )
                if out_of_time:
                    break
        except KeyboardInterrupt:  # also SIGTERM; anywhere in the epoch, validation and saving included
            save(epochs_done, time.monotonic() - t_start + elapsed_before, metrics or None)
            raise Interrupted(f"interrupted: saved the model at step {step} in {opts.out}") from None
    return metrics
