"""Training a JMVAE: the loop, validation, sample grids, checkpoints, resume and DDP.

One process trains on one device. Under `torchrun --nproc-per-node N -m jmvae_cli train ...` each of N processes
takes a shard of every epoch and gradients are averaged by DistributedDataParallel; rank 0 alone logs and writes.

What a run folder (--out) guarantees:
  - one run at a time: the run holds OUT/.train.lock, a second run into the same folder is refused;
  - the checkpoint is train_state.safetensors, written atomically, then model.safetensors is exported from it;
    resume brings the export, metrics.jsonl and the sample grids back in step with the checkpoint;
  - non-finite weights are never saved: a run that diverges (a non-finite loss, weights or validation) stops
    and names the checkpoint it leaves on disk;
  - an existing run is never overwritten: --resume continues it, with the options it was trained with.
"""

import copy
import json
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from filelock import FileLock, Timeout
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from jmvae_cli import registry
from jmvae_cli.attributes import present
from jmvae_cli.checkpoint import (
    count_nonfinite,
    load_model,
    load_train_state,
    model_meta,
    read_meta,
    rewrite_stale_sidecar,
    save_model,
    save_train_state,
)
from jmvae_cli.console import console
from jmvae_cli.data import FaceData, Preprocess, load_data
from jmvae_cli.errors import JmvaeError
from jmvae_cli.files import atomic_write, remove_stale_temporaries
from jmvae_cli.gan import Discriminator, discriminator_loss, generator_loss
from jmvae_cli.images import from_uint8_array, write_image
from jmvae_cli.model import JMVAE, JMVAEConfig, output_to_pixels, pixels_to_input
from jmvae_cli.registry import build
from jmvae_cli.runtime import Precision, pick_device
from jmvae_cli.train_options import (
    TRAINED_PARTS,
    TrainOptions,
    default_of,
    describe_value,
    flag,
    option_on_cli,
    options_on_resume,
    options_that_may_change,
)

__all__ = ["Interrupted", "TrainOptions", "TrainingError", "options_for", "train"]

SHOWN = ("rec_x", "rec_w", "kl", "gen", "disc")  # loss terms on the progress bar
MODEL_FILE = "model.safetensors"
STATE_FILE = "train_state.safetensors"
METRICS_FILE = "metrics.jsonl"
SAMPLES_DIR = "samples"
LOCK_FILE = ".train.lock"

# The learning-rate schedule (lr_at): a linear warm-up, since Adam's first steps are noisy with batch norm, over
# LR_WARMUP_STEPS steps but at most LR_WARMUP_SHARE of a short run; then a cosine decay to LR_FLOOR of the peak.
LR_WARMUP_STEPS = 200
LR_WARMUP_SHARE = 0.1
LR_FLOOR = 0.1
EMA_WARMUP = 10  # the average's decay starts at 1/EMA_WARMUP and rises to --ema, so it soon forgets the init
GRID_FACES = 8  # columns of the per-epoch sample grid
PROGRESS_EVERY = 10  # steps between progress-bar updates
RESIDENT_SHARE = 0.25  # of the GPU's free memory that the training images may take (batch_source)
# Options whose values live in the model's config: on resume they are read from the config, which is what the
# weights were built from (an --init run's options do not say it).
CONFIG_OPTIONS = ("model", "objective", "latent_dim", "decoder_width", "alpha", "cross_weight")


class TrainingError(JmvaeError):
    pass


class Interrupted(JmvaeError):
    """Ctrl-C during training: raised after the checkpoint is saved."""

    exit_code = 130


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


# ----------------------------------------------------------------------------- the run folder


@contextmanager
def claimed(out: Path):
    """Create OUT and hold its lock while the block runs, so that a second run into it is refused rather than
    mixed with this one; temporaries that killed runs left in it are removed first. A folder made here that the run
    leaves holding only its lock (it failed before writing anything: bad --data, say) is removed again."""
    made = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise JmvaeError(f"--out {out} is a file, not a folder") from None
    except OSError as e:
        raise JmvaeError(f"cannot create --out {out} ({e.strerror})") from None
    lock = FileLock(out / LOCK_FILE, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise JmvaeError(
            f"{out} is in use by another jmvae train (it holds {out / LOCK_FILE}): wait for it, or choose another --out"
        ) from None
    except OSError as e:
        raise JmvaeError(f"cannot write in --out {out} ({e.strerror})") from None
    try:
        removed = remove_stale_temporaries(out) + remove_stale_temporaries(out / SAMPLES_DIR)
        if removed:
            console.print(
                f"removed {len(removed)} temporary files that a killed run left in {out}", highlight=False, markup=False
            )
        yield
    finally:
        lock.release()
        if made and [p.name for p in out.iterdir()] == [LOCK_FILE]:
            try:
                (out / LOCK_FILE).unlink()
                out.rmdir()
            except OSError:  # another run took the folder meanwhile: it is that run's
                pass


def check_out_dir(opts: TrainOptions) -> None:
    state, model = opts.out / STATE_FILE, opts.out / MODEL_FILE
    if opts.resume and opts.init:
        raise JmvaeError("--init starts a new run from a model file and --resume continues the one in --out: not both")
    if opts.resume and not state.exists():
        raise JmvaeError(f"--resume: no {STATE_FILE} in {opts.out} to resume from")
    if not opts.resume and state.exists():
        raise JmvaeError(f"{opts.out} already holds a trained model: pass --resume to continue it, or another --out")
    if not opts.resume and model.exists():
        raise JmvaeError(f"{opts.out} already holds a {MODEL_FILE}: choose another --out")


def bring_in_step(out: Path, start: "Start") -> None:
    """Make the run folder agree with its checkpoint (train_state), whatever moment a kill chose: the model file is
    exported again if it is behind, JSON copies are rewritten if stale, and the metrics lines and sample grids of
    epochs the checkpoint does not hold are dropped (they are trained again). A fresh run starts from nothing, so
    it drops those of a run that never saved."""
    if start.meta is not None:
        model_file = out / MODEL_FILE
        try:
            exported = read_meta(model_file)
        except JmvaeError:
            exported = {}
        if (exported.get("step"), exported.get("epochs_done")) != (start.step, start.epochs_done):
            module = build(start.cfg)
            module.load_state_dict(start.states["ema" if "ema" in start.states else "model"])
            save_model(model_file, module, model_meta(start.meta))
            console.print(
                f"{model_file} was behind the checkpoint (a save was cut short): exported it again, "
                f"epoch {start.epochs_done} (step {start.step})",
                highlight=False,
                markup=False,
            )
        for path in (out / STATE_FILE, model_file):
            rewrite_stale_sidecar(path)
    # the line of an epoch --time-limit cut short stays until a resume finishes that epoch (end_epoch)
    drop_epochs_after(out, start.epochs_done + bool((start.meta or {}).get("epoch_batches_done")))


def drop_epochs_after(out: Path, epochs_done: int) -> None:
    """Keep one metrics line per epoch up to epochs_done (the last: an earlier version logged re-trained epochs
    twice, and a kill can cut a line short), and the sample grids of those epochs."""
    metrics_file = out / METRICS_FILE
    if metrics_file.exists():
        lines = metrics_file.read_text().splitlines()
        by_epoch = {}
        for line in lines:
            try:
                epoch = json.loads(line)["epoch"]
            except (ValueError, KeyError, TypeError):
                continue
            if epoch <= epochs_done:
                by_epoch[epoch] = line
        kept = [by_epoch[e] for e in sorted(by_epoch)]
        if kept != lines:
            atomic_write(metrics_file, "".join(line + "\n" for line in kept).encode())
    for grid in (out / SAMPLES_DIR).glob("epoch_*.png"):
        number = grid.stem.removeprefix("epoch_")
        if number.isdigit() and int(number) > epochs_done:
            grid.unlink()


# ----------------------------------------------------------------------------- options on resume


def _json(value):
    return json.loads(json.dumps(value))  # tuples become lists, as in saved metadata


def options_of(meta: dict) -> dict:
    """The options a run was saved with, as TrainOptions.to_dict() writes them; those that shape the model are
    read from its config."""
    cfg = JMVAEConfig.from_dict(meta["config"]).to_dict()
    default = JMVAEConfig().to_dict()
    arch = {k: v for k, v in cfg.items() if k not in (*CONFIG_OPTIONS, "n_attrs") and v != default[k]}
    return _json({**meta.get("train", {}), **{k: cfg[k] for k in CONFIG_OPTIONS}, "arch": arch})


def resume_conflicts(opts: TrainOptions, meta: dict) -> list[str]:
    """The options of `opts` that would train another model than the run saved with `meta`, as one would type
    them: ['--latent-dim 16 (saved: 128)']."""
    saved = options_of(meta)
    mine = options_of({"train": opts.to_dict(), "config": config_of(opts, meta["config"]["n_attrs"]).to_dict()})
    names = [n for n in options_on_resume("keep") if n in saved and mine[n] != saved[n]]
    if saved.get("ema") and not opts.ema:  # the saved model is an average: dropping it would swap the model
        names.append("ema")
    return [f"{describe_value(n, mine[n])} (saved: {describe_value(n, saved[n])})" for n in names]


# Options that shape the model: a fine-tune (--init) keeps its model's; the weights of the objective's terms may
# change, the objective may not
INIT_SHAPE = ("model", "objective", "latent_dim")


def check_init_shape(init: Path, given: dict, cfg: dict, defaults: bool = False) -> None:
    """Refuse options `given` (by name) that would shape another model than the one `init` holds (its config
    `cfg`), rather than silently take the init's; with `defaults`, options at their default values pass."""
    shaped = [
        f"{describe_value(n, v)} (the model's: {cfg[n]})"
        for n, v in given.items()
        if n in INIT_SHAPE and v != cfg[n] and not (defaults and v == default_of(n))
    ]
    if shaped:
        raise JmvaeError(
            f"--init {init}: {'; '.join(shaped)} would train another model than the one it holds; leave them out "
            "(a fine-tune keeps its model's architecture)"
        )


def options_for(given: dict) -> TrainOptions:
    """The options of a run from those a user gave (by field name); with resume=True the others are the saved
    run's, so that `--resume --epochs 40` is enough."""
    out = Path(given.get("out", default_of("out")))
    state = out / STATE_FILE
    if not given.get("resume") or not state.is_file():  # a missing state is train()'s error to report
        if "data" not in given:  # which --resume alone leaves to the saved run
            raise JmvaeError(
                f"--resume: no {STATE_FILE} in {out} to resume from" if given.get("resume") else "no --data given"
            )
        if given.get("init") is not None:
            try:
                cfg = JMVAEConfig.from_dict(read_meta(Path(given["init"]))["config"]).to_dict()
            except (JmvaeError, KeyError, TypeError, ValueError):
                cfg = None  # no model file: train() says so
            if cfg is not None:
                check_init_shape(given["init"], given, cfg)
        return TrainOptions(**given)
    saved = {k: v for k, v in options_of(read_meta(state)).items() if k not in options_on_resume("machine")}
    # the folder resumed is the one whose state was read, --out typed or not: the saved run's own may be elsewhere
    saved.update(out=out, init=None, resume=True)
    return TrainOptions.from_dict({**saved, **given})


# ----------------------------------------------------------------------------- batches


def batch_tensors(data: FaceData, idx: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    idx = np.sort(idx)  # sorted reads are sequential in the memory-mapped cache
    x = pixels_to_input(torch.from_numpy(data.images[idx]).to(device, non_blocking=True))  # (B, 3, S, S)
    w = torch.from_numpy(data.attrs[idx]).to(device).float()  # (B, A)
    return x, w


def batch_source(data: FaceData, device: torch.device) -> Callable[[np.ndarray], tuple[torch.Tensor, torch.Tensor]]:
    """idx -> (x, w) on the device, as batch_tensors. Where a GPU has room for them, the uint8 images move there
    once, and each step indexes them there rather than waiting for its batch to be copied from host memory."""
    if device.type != "cuda" or data.images.nbytes > RESIDENT_SHARE * torch.cuda.mem_get_info(device)[0]:
        return lambda idx: batch_tensors(data, idx, device)
    # np.array copies: torch warns on the read-only memmap
    images = torch.from_numpy(np.array(data.images)).to(device)  # (N, S, S, 3) uint8
    attrs = torch.from_numpy(data.attrs).to(device).float()  # (N, A)

    def get(idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.from_numpy(idx).to(device)
        return pixels_to_input(images[rows]), attrs[rows]  # (B, 3, S, S), (B, A)

    return get


def reframe(x: torch.Tensor, amount: float) -> torch.Tensor:
    """Half the faces of a batch x (B, 3, S, S), at random, framed a little otherwise: shifted by up to `amount`
    of the side along each axis, scaled by up to exp(+-amount) and turned by up to +-amount radians, the image
    mirrored at its edges; the other half exactly as they were. A photo's face comes framed by the aligner, which
    misses the training framing by a few percent (docs/results.md), and a model that has seen each training face
    only at its exact framing reads it as a stranger off it."""
    b = len(x)
    uniform = lambda *shape: torch.rand(*shape, device=x.device) * 2 - 1  # noqa: E731
    moved = torch.rand(b, device=x.device) < 0.5  # (B,)
    a, scale = uniform(b) * amount, torch.exp(uniform(b) * amount)  # (B,) each
    shift = uniform(b, 2) * 2 * amount  # (B, 2): normalised coordinates span 2 per side
    rot = torch.stack([torch.stack([a.cos(), -a.sin()], -1), torch.stack([a.sin(), a.cos()], -1)], -2)  # (B, 2, 2)
    theta = torch.cat([scale[:, None, None] * rot, shift[:, :, None]], 2).to(x.dtype)  # (B, 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)  # (B, S, S, 2)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    out = pixels_to_input(output_to_pixels(out))  # back on the 8-bit values the likelihood is of
    return torch.where(moved[:, None, None, None], out, x)


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
    q, probabilities cut at 0.5), averaged over the images `idx` (at least one)."""
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
                    correct += (present(model.attrs_from_images(x)).float() == w).double().sum(0).cpu()  # (A,)
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v) * len(x)
    model.train()
    n = len(idx)
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
    tiles = output_to_pixels(torch.cat(rows)).cpu().numpy()  # (R*B, S, S, 3)
    r, n, s = len(rows), len(idx), tiles.shape[1]
    return tiles.reshape(r, n, s, s, 3).transpose(0, 2, 1, 3, 4).reshape(r * s, n * s, 3)


# ----------------------------------------------------------------------------- the schedule


def lr_at(step: int, progress: float, peak: float, warmup_steps: int = LR_WARMUP_STEPS) -> float:
    """Linear warm-up over warmup_steps, then cosine decay over the run's progress in [0, 1] to LR_FLOOR * peak."""
    cosine = LR_FLOOR + (1 - LR_FLOOR) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return peak * min(1.0, (step + 1) / warmup_steps) * cosine


def kl_weight_at(step: int, kl_warmup_steps: int) -> float:
    """The prior KL's weight (beta): rises linearly from 0 to 1 over the KL warm-up, so that the decoders learn to
    use z before the prior pulls q(z|.) onto it."""
    return min(1.0, (step + 1) / kl_warmup_steps)


# ----------------------------------------------------------------------------- where a run starts


def config_of(opts: TrainOptions, n_attrs: int) -> JMVAEConfig:
    try:
        return JMVAEConfig(
            model=opts.model,
            n_attrs=n_attrs,
            latent_dim=opts.latent_dim,
            objective=opts.objective,
            alpha=opts.alpha,
            cross_weight=opts.cross_weight,
            decoder_width=opts.decoder_width or 1.0,
            **opts.arch,
        )
    except (TypeError, ValueError) as e:
        raise JmvaeError(f"cannot build the model: {e}") from None


@dataclass
class Start:
    """Where a run begins: a fresh model, a model file to fine-tune (--init), or a saved run (--resume)."""

    cfg: JMVAEConfig
    preprocess: Preprocess  # of the training images: the model's image size and framing
    source: str  # what the weights come from, for messages
    attr_names: list[str] | None = None  # those the weights were trained on; None: a fresh model takes the data's
    states: dict[str, dict] = field(default_factory=dict)  # module state_dicts by name
    optimizer_states: dict[str, dict] = field(default_factory=dict)
    step: int = 0
    epochs_done: int = 0
    train_seconds: float = 0.0
    meta: dict | None = None  # the saved training state's metadata (on resume)
    fresh: str | None = None  # the prefix of the model's weights that start afresh instead (a new decoder)

    def for_data(self, attr_names: list[str]) -> "Start":
        if self.attr_names is None:
            return replace(self, cfg=replace(self.cfg, n_attrs=len(attr_names)), attr_names=attr_names)
        if attr_names != self.attr_names:
            raise JmvaeError(f"the data's attributes differ from those of {self.source}")
        return self


def starting_point(opts: TrainOptions) -> Start:
    if opts.resume:
        path = opts.out / STATE_FILE
        states, optimizer_states, meta = load_train_state(path)
        conflicts = resume_conflicts(opts, meta)
        if conflicts:
            changeable = ", ".join(flag(n) for n in options_that_may_change() if option_on_cli(n))
            raise JmvaeError(
                f"--resume: {'; '.join(conflicts)} would train another model than the one in {opts.out}; "
                f"leave them out (only {changeable} may change on resume)"
            )
        bad = count_nonfinite(t for state in states.values() for t in state.values())
        if bad:
            raise JmvaeError(f"{path} holds {bad} non-finite weights (a diverged run): it cannot be resumed")
        return Start(
            JMVAEConfig.from_dict(meta["config"]),
            Preprocess.from_dict(meta["preprocess"]),
            f"the run in {opts.out}",
            meta["attr_names"],
            states,
            optimizer_states,
            meta["step"],
            meta["epochs_done"],
            meta.get("train_seconds", 0.0),
            meta,
        )
    if opts.init:
        loaded = load_model(opts.init)
        # a library caller's options: those not at their defaults count as given (the command line checks what was
        # typed, in options_for)
        check_init_shape(
            opts.init, {n: getattr(opts, n) for n in INIT_SHAPE}, loaded.model.cfg.to_dict(), defaults=True
        )
        cfg = replace(loaded.model.cfg, alpha=opts.alpha, cross_weight=opts.cross_weight)
        state, source, fresh = loaded.model.state_dict(), f"--init {opts.init}", None
        if opts.decoder_width not in (None, cfg.decoder_width):
            # A decoder of another width cannot take the init's weights: a new one learns to draw its latents.
            cfg = replace(cfg, decoder_width=opts.decoder_width)
            fresh = "dec_x."
            state = {k: v for k, v in state.items() if not k.startswith(fresh)}
            source += f" with a new image decoder {opts.decoder_width:g}x as wide"
        return Start(
            cfg,
            Preprocess.from_dict(loaded.meta["preprocess"]),
            source,
            loaded.attr_names,
            states={"model": state},
            fresh=fresh,
        )
    cfg = config_of(opts, n_attrs=JMVAEConfig.n_attrs)  # n_attrs: the data's, once it is read (Start.for_data)
    return Start(cfg, Preprocess(size=cfg.image_size), "a new model")


def build_modules(cfg: JMVAEConfig, opts: TrainOptions, device: torch.device, prec: Precision, start: Start):
    """The model (with --gan the discriminator, with --ema the average of the model) and their Adam optimizers,
    loaded from `start`."""
    model = build(cfg).to(device, memory_format=prec.memory_format)
    modules = {"model": model}
    params = model.parameters()
    if opts.train_only != "all":
        try:
            params = model.train_only(TRAINED_PARTS[opts.train_only])
        except ValueError as e:
            raise JmvaeError(f"--train-only {opts.train_only}: {e}") from None
    optimizers = {"optimizer": torch.optim.Adam(params, lr=opts.lr, betas=(opts.beta1, 0.999))}
    if opts.gan:
        modules["discriminator"] = Discriminator(image_size=cfg.image_size).to(device, memory_format=prec.memory_format)
        optimizers["disc_optimizer"] = torch.optim.Adam(
            modules["discriminator"].parameters(), lr=opts.gan_lr, betas=(0.5, 0.999)
        )
    for name, state in start.states.items():
        if name != "ema":
            modules[name].load_state_dict(state, strict=start.fresh is None)
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


# ----------------------------------------------------------------------------- signals


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()  # signal handlers live in the main thread only


@contextmanager
def sigterm_as_interrupt():
    """`kill`, `timeout` and cluster schedulers stop a job with SIGTERM: save and stop as for Ctrl-C, instead of
    losing the work since the last checkpoint."""
    if not _in_main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def signals_held():
    """Hold Ctrl-C and SIGTERM while a checkpoint is written, then act on them (KeyboardInterrupt): cut short, the
    save would be lost, and a second Ctrl-C is what people press while the save made on the first one runs."""
    if not _in_main_thread():
        yield
        return
    came = []
    previous = {s: signal.signal(s, lambda signum, frame: came.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if came:
        raise KeyboardInterrupt


# ----------------------------------------------------------------------------- the trainer


def describe(cfg: JMVAEConfig, opts: TrainOptions) -> str:
    name = cfg.objective if issubclass(registry.model_class(cfg.model), JMVAE) else cfg.model
    return name + ("-gan" if opts.gan else "")


class Trainer:
    """One run's modules, schedule and checkpoints: train_step, train_epoch, end_epoch (validation, metrics, grid)
    and save_checkpoint, driven by run()."""

    def __init__(
        self, opts: TrainOptions, d: Dist, device: torch.device, prec: Precision, data: FaceData, start: Start
    ):
        self.opts, self.d, self.device, self.prec, self.data = opts, d, device, prec, data
        self.cfg = start.cfg
        self.modules, self.optimizers = build_modules(start.cfg, opts, device, prec, start)
        self.model, self.ema = self.modules["model"], self.modules.get("ema")
        self.disc = self.modules.get("discriminator")
        self.final = self.ema if self.ema is not None else self.model  # what is validated, pictured and saved
        self.ddp = torch.nn.parallel.DistributedDataParallel(self.model) if d.world > 1 else self.model
        self.loss_terms = self.ddp
        if opts.compile:
            # This small model's step is bound by launching its few hundred kernels; CUDA graphs replay them as one
            # (reduce-overhead), and on the CPU inductor fuses them (docs/results.md, "Training speed on a GPU").
            self.loss_terms = torch.compile(self.ddp, mode="reduce-overhead" if device.type == "cuda" else None)

        self.batch = batch_source(data, device)
        self.train_idx, self.val_idx = data.indices("train"), data.indices("val")[: opts.val_images]
        self.grid_idx = (self.val_idx if len(self.val_idx) >= GRID_FACES else self.train_idx)[:GRID_FACES]
        self.steps_per_epoch = len(self.train_idx) // (d.world * opts.batch_size)
        self.total_steps = self.steps_per_epoch * opts.epochs
        self.kl_warmup_steps = max(1, int(opts.warmup_epochs * self.steps_per_epoch))
        self.lr_warmup_steps = max(1, min(LR_WARMUP_STEPS, int(LR_WARMUP_SHARE * self.total_steps)))

        self.step, self.epochs_done, self.epoch = start.step, start.epochs_done, start.epochs_done
        # batches of the epoch under way trained already: a run stopped mid-epoch (a signal, --time-limit) goes on
        # from the next one, rather than train the epoch's first batches twice
        saved = start.meta or {}
        self.batches_done = saved.get("epoch_batches_done", 0)
        self.epoch_layout = (d.world, self.steps_per_epoch)
        if self.batches_done and saved.get("epoch_layout") != list(self.epoch_layout):
            # other processes or other data than the stopped run's: its position means other images now
            console.print(
                f"[yellow]note:[/] the run stopped within epoch {self.epochs_done + 1} with other processes or data "
                "than these: that epoch starts over",
                highlight=False,
                soft_wrap=True,
            )
            self.batches_done = 0
        # the last epoch's end (validation, metrics line, sample grid) until written: a run stopped in between saves
        # it, and its resume writes it first (an epoch trained and saved is never reported nor trained again)
        self.report_due = saved.get("report_due")
        self.on_disk = (start.epochs_done, start.step) if start.meta is not None else None  # (epochs, step) saved
        self.seconds_before, self.t_start = start.train_seconds, time.monotonic()
        self.last_save = self.t_start
        self.meta = {
            "attr_names": data.attr_names,
            "preprocess": start.preprocess.to_dict(),
            "train": opts.to_dict(),
            "data": {
                "train_images": len(self.train_idx),
                "val_images": len(data.indices("val")),
                "skipped": data.skipped,
            },
        }

    # --- the clock and the schedule

    def train_seconds(self) -> float:
        return time.monotonic() - self.t_start + self.seconds_before

    def out_of_time(self) -> bool:
        return self.opts.time_limit is not None and self.train_seconds() > 60 * self.opts.time_limit

    def progress(self) -> float:
        """How far the run is, in [0, 1]: by steps, or under --time-limit by the clock if that is further."""
        done = self.step / self.total_steps
        if self.opts.time_limit is not None:
            done = max(done, self.train_seconds() / (60 * self.opts.time_limit))
        return done

    # --- one step

    def train_step(self, x: torch.Tensor, w: torch.Tensor) -> dict[str, torch.Tensor] | None:
        """One update of the model (and with --gan one of the discriminator): its loss terms, or None when bf16
        overflowed and the batch was skipped."""
        for g in self.optimizers["optimizer"].param_groups:
            g["lr"] = lr_at(self.step, self.progress(), self.opts.lr, self.lr_warmup_steps)
        with self.prec.autocast():
            beta = kl_weight_at(self.step, self.kl_warmup_steps)
            if self.opts.compile:  # a tensor, not a float that changes every step and would be compiled for again
                beta = torch.tensor(beta, device=self.device)
            try:
                terms = self.loss_terms(x, w, beta)
            except torch._dynamo.exc.TorchDynamoException as e:
                raise JmvaeError(
                    f"--compile: torch.compile failed ({str(e).splitlines()[0]}); train without it"
                ) from None
            loss = terms["loss"]
            if self.disc is not None:
                # Only the image decoder learns from the adversary: z from q(z|w), the route of attr2img and edit,
                # detached from its encoder.
                fake = self.model.decode_x(self.model.q_w(w).sample().detach())[0]  # (B, 3, S, S)
                terms["gen"] = generator_loss(self.disc(fake))
                loss = loss + self.opts.gan_weight * 3 * self.cfg.image_size**2 * terms["gen"]
        if not torch.isfinite(loss):
            if self.prec.dtype is not None and self.opts.precision == "auto" and self.d.world == 1:
                # bf16's short mantissa can overflow where fp32 would not: keep going in fp32.
                self.prec = Precision(self.device, None)
                console.print(f"[yellow]non-finite loss in bf16 at step {self.step}: continuing in fp32")
                self.batches_done += 1
                return None
            raise self.diverged(f"the loss became {float(loss.detach())}")
        optimizer = self.optimizers["optimizer"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        # the updates and their count go together: a stop between them would have a resume train the batch again
        with signals_held():
            optimizer.step()
            if self.ema is not None:
                update_ema(self.ema, self.model, min(self.opts.ema, (1 + self.step) / (EMA_WARMUP + self.step)))
            if self.disc is not None:
                terms["disc"] = self.discriminator_step(x, fake.detach())
            self.step += 1
            self.batches_done += 1
        return terms

    def discriminator_step(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        with self.prec.autocast():
            loss = discriminator_loss(self.disc(real), self.disc(fake))
        self.optimizers["disc_optimizer"].zero_grad(set_to_none=True)
        loss.backward()
        self.optimizers["disc_optimizer"].step()
        return loss

    def train_epoch(self, epoch: int, bar: Progress, task) -> tuple[dict[str, float], int, float, bool]:
        """The epoch's batches from self.batches_done on -> (summed loss terms, steps taken, seconds, whether the
        epoch was finished: --time-limit can end it early)."""
        sums: dict[str, torch.Tensor] = {}
        n_steps, t0 = 0, time.monotonic()
        batches = epoch_batches(self.train_idx, self.opts.batch_size, self.opts.seed, epoch, self.d)
        for i in range(self.batches_done, len(batches)):
            x, w = self.batch(batches[i])
            if self.opts.flip:
                flip = torch.rand(len(x), device=self.device) < 0.5
                x = torch.where(flip[:, None, None, None], x.flip(3), x)
            if self.opts.jitter:
                x = reframe(x, self.opts.jitter)
            terms = self.train_step(x, w)  # counts the batch done (batches_done)
            if terms is None:
                continue
            n_steps += 1
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v.detach()
            if self.step % PROGRESS_EVERY == 0 or n_steps == self.steps_per_epoch:
                ips = n_steps * len(x) * self.d.world / (time.monotonic() - t0)
                shown = " ".join(f"{k} {float(v) / n_steps:.4g}" for k, v in sums.items() if k in SHOWN)
                bar.update(task, completed=self.step, epoch=epoch + 1, terms=shown, speed=f"{ips:.0f} img/s")
            if self.out_of_time():
                break
        finished = self.batches_done >= len(batches)
        return {k: float(v) for k, v in sums.items()}, n_steps, time.monotonic() - t0, finished

    # --- the end of an epoch (rank 0)

    def end_epoch(self, epoch: int, sums: dict[str, float], n_steps: int, seconds: float) -> dict:
        """Validate, log a metrics line and draw the sample grid of `epoch` (its number, from 1; an epoch that
        --time-limit cut short is logged too, and again once a resume finishes it); validation that is not finite is
        divergence."""
        val = None
        if len(self.val_idx):
            val = validate(self.final, self.data, self.val_idx, self.device, self.prec)
            bad = [k for k, v in val.items() if isinstance(v, float) and not math.isfinite(v)]
            if bad:
                shown = next((k for k in ("bits_per_dim", "loss") if k in bad), bad[0])
                raise self.diverged(f"validation gave {shown} {val[shown]}")
        metrics = {
            "epoch": epoch,
            "step": self.step,
            "lr": self.optimizers["optimizer"].param_groups[0]["lr"],
            "precision": self.prec.name,
            "images_per_s": n_steps * self.opts.batch_size * self.d.world / seconds,
            "train": {k: v / max(n_steps, 1) for k, v in sums.items()},
            "val": val,
        }
        out = self.opts.out
        with self.writing(out / METRICS_FILE):
            drop_epochs_after(out, epoch - 1)  # a line of this epoch before it was finished, or reported in full
            with open(out / METRICS_FILE, "a") as f:
                f.write(json.dumps(metrics) + "\n")
        grid = sample_grid(self.final, self.data, self.grid_idx, self.device)
        if grid is not None:
            path = out / SAMPLES_DIR / f"epoch_{epoch:03d}.png"
            with self.writing(path):
                path.parent.mkdir(exist_ok=True)
                write_image(from_uint8_array(grid), path)
        return metrics

    # --- checkpoints

    def on_disk_text(self) -> str:
        if self.on_disk is None:
            return f"no checkpoint was saved in {self.opts.out} yet"
        return f"the last checkpoint in {self.opts.out} is intact: epoch {self.on_disk[0]}, step {self.on_disk[1]}"

    def diverged(self, what: str) -> TrainingError:
        return TrainingError(
            f"{what} at step {self.step} (epoch {self.epoch + 1}): training diverged and stopped, saving nothing; "
            f"{self.on_disk_text()}. Try a lower --lr or --precision fp32"
        )

    @contextmanager
    def writing(self, path: Path):
        """A write into the run folder that fails (disk full, file-size limit, permissions) is one line that says
        what is still on disk."""
        try:
            yield
        except OSError as e:
            raise TrainingError(f"could not write {path} ({e.strerror or e}); {self.on_disk_text()}") from None

    def save_checkpoint(self, metrics: dict | None, force: bool = True) -> None:
        """Write the training state, then the model exported from it; without `force` only if the last save is
        checkpoint_every seconds old. Non-finite weights are divergence, never saved."""
        if not self.d.main or self.on_disk == (self.epochs_done, self.step):
            return
        if not force and time.monotonic() - self.last_save < self.opts.checkpoint_every:
            return
        tensors = [t for m in self.modules.values() for t in m.state_dict().values()]
        tensors += [
            v for opt in self.optimizers.values() for s in opt.state.values() for v in s.values() if torch.is_tensor(v)
        ]
        bad = count_nonfinite(tensors)
        if bad:
            raise self.diverged(f"{bad} weights became non-finite")
        meta = {
            **self.meta,
            "step": self.step,
            "epochs_done": self.epochs_done,
            "train_seconds": self.train_seconds(),
            "metrics": metrics,
            "report_due": self.report_due,
            "epoch_batches_done": self.batches_done,
            "epoch_layout": self.epoch_layout,  # (processes, batches each) that position counts in
        }
        out = self.opts.out
        with signals_held():
            with self.writing(out / STATE_FILE):
                save_train_state(out / STATE_FILE, self.modules, self.optimizers, meta)
            self.on_disk = (self.epochs_done, self.step)
            with self.writing(out / MODEL_FILE):
                save_model(out / MODEL_FILE, self.final, meta)
        self.last_save = time.monotonic()

    # --- the loop

    def run(self) -> dict:
        """Train from where the run stands to opts.epochs (or the time limit); the last epoch's metrics."""
        opts, main = self.opts, self.d.main
        bar = Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[terms]}"),
            TextColumn("{task.fields[speed]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            disable=not (main and opts.progress),
        )
        metrics: dict = {}
        with bar:
            task = bar.add_task("train", total=self.total_steps, completed=self.step, epoch="", terms="", speed="")
            try:
                if self.report_due is not None and main:
                    metrics = self.end_epoch(**self.report_due)
                    self.report_due, self.on_disk = None, None  # saved again without it
                    self.save_checkpoint(metrics)
                last = opts.epochs if not self.out_of_time() else self.epochs_done  # spent: only the report due
                for epoch in range(self.epochs_done, last):
                    self.epoch = epoch
                    sums, n_steps, seconds, finished = self.train_epoch(epoch, bar, task)
                    if finished:
                        self.epochs_done, self.batches_done = epoch + 1, 0
                    self.report_due = {"epoch": epoch + 1, "sums": sums, "n_steps": n_steps, "seconds": seconds}
                    out_of_time = self.out_of_time()
                    if main:
                        metrics = self.end_epoch(**self.report_due)
                        self.report_due = None
                        self.save_checkpoint(metrics, force=self.epochs_done == opts.epochs or out_of_time)
                        val = metrics["val"] or {}
                        shown = [f"{k} {val[k]:.4f}" for k in ("bits_per_dim", "rec_w", "attr_acc") if k in val]
                        bar.console.print(
                            f"epoch {metrics['epoch']}{'' if finished else ' (cut short by --time-limit)'}: "
                            + (f"val {', '.join(shown)}" if metrics["val"] else "no validation images")
                            + f", {metrics['images_per_s']:.0f} img/s"
                        )
                    if out_of_time:
                        break
            except KeyboardInterrupt:  # also SIGTERM; anywhere in the epoch, validation and saving included
                try:
                    self.save_checkpoint(metrics or None)
                except KeyboardInterrupt:  # another signal during that save: it was finished first
                    pass
                raise Interrupted(f"interrupted: saved the model at step {self.step} in {opts.out}") from None
        return metrics


# ----------------------------------------------------------------------------- a run


def train(opts: TrainOptions) -> dict | None:
    """Train (or resume) a model as `opts` says; returns the last epoch's metrics (None in the other processes of
    a torchrun: rank 0 reports)."""
    opts.check()
    d = init_distributed(opts.device)
    try:
        with sigterm_as_interrupt(), claimed(opts.out) if d.main else nullcontext():
            return _train(opts, d)
    finally:
        if d.world > 1:
            dist.destroy_process_group()


def _train(opts: TrainOptions, d: Dist) -> dict:
    device = pick_device(opts.device)
    if device.type == "cuda" and d.world > 1:
        device = torch.device("cuda", d.local_rank)
    prec = Precision.choose(device, opts.precision)
    if d.world > 1 and (opts.time_limit is not None or opts.gan or opts.compile):
        raise JmvaeError(
            "--time-limit, --gan and --compile work in single-process runs only (under torchrun, set --epochs)"
        )
    if opts.train_only != "all":
        if not (opts.init or opts.resume):
            raise JmvaeError(f"--train-only {opts.train_only} fine-tunes a trained model: give it with --init")
    check_out_dir(opts)
    start = starting_point(opts)
    if opts.gan and not issubclass(registry.model_class(start.cfg.model), JMVAE):  # the model --init gave, if any
        raise JmvaeError(f"--gan trains a JMVAE's image decoder; it does not apply to a {start.cfg.model} model")
    if d.main:
        bring_in_step(opts.out, start)
    # a report still due (a stop while the last epoch was validated) is written by a resume, whatever is left to do
    report_due = start.meta is not None and start.meta.get("report_due") is not None
    if start.epochs_done >= opts.epochs and not report_due:
        raise JmvaeError(f"{opts.out} is already trained for {start.epochs_done} epochs: raise --epochs to train on")
    spent = opts.time_limit is not None and start.train_seconds >= 60 * opts.time_limit  # it counts over resumes
    if spent and not report_due:
        raise JmvaeError(
            f"{opts.out} has trained for {start.train_seconds / 60:.1f} minutes, its --time-limit of "
            f"{opts.time_limit:g}: raise --time-limit to train on"
        )
    torch.manual_seed(opts.seed + d.rank)

    load = dict(
        preprocess=start.preprocess,
        val_fraction=opts.val_fraction,
        cache_dir=opts.cache_dir,
        max_images=opts.max_images,
    )
    if d.main:  # rank 0 decodes and caches; the others wait, then read its cache
        data = load_data(opts.data, progress=opts.progress, **load)
    if d.world > 1:
        dist.barrier()
    if not d.main:
        with console.capture():  # what rank 0 reported already (skipped images)
            data = load_data(opts.data, progress=False, **load)
    if len(data.indices("train")) < opts.batch_size * d.world:
        raise JmvaeError(
            f"only {len(data.indices('train'))} training images: fewer than one batch of {opts.batch_size}"
        )
    start = start.for_data(data.attr_names)

    trainer = Trainer(opts, d, device, prec, data, start)
    if d.main:
        n_val = len(data.indices("val"))
        console.print(
            f"[bold]jmvae train[/]: {len(trainer.train_idx)} training / {n_val} validation images, "
            f"{len(data.attr_names)} attributes, {start.cfg.image_size} px, {describe(start.cfg, opts)}, "
            f"{sum(p.numel() for p in trainer.model.parameters()) / 1e6:.1f}M parameters, "
            f"{device.type} {prec.name}"
            + (f", {d.world} processes" if d.world > 1 else "")
            + (f", from {escape(str(start.source))}" if opts.init else "")
            + (", compiled" if opts.compile else "")
        )
    metrics = trainer.run()
    return metrics if d.main else None
