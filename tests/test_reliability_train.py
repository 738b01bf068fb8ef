"""`jmvae train` through the command line when things go wrong: divergence, kills between writes, failing writes,
two runs into one folder, conflicting options on resume, litter of killed runs, signals during a save.

Nothing is lost (the last good checkpoint survives every failure), nothing is stale (model file, metrics and grids
agree with the checkpoint), never a traceback (each failure is one line naming the path and the reason)."""

import functools
import json
import os
import resource
import signal
import subprocess
import sys

import pytest
import torch
from filelock import FileLock
from typer.testing import CliRunner

from jmvae_cli import train as train_module
from jmvae_cli.checkpoint import load_model, read_meta, save_model
from jmvae_cli.cli import app
from jmvae_cli.errors import JmvaeError
from jmvae_cli.gan import Discriminator
from jmvae_cli.model import JMVAE
from jmvae_cli.train import LOCK_FILE, TrainOptions
from tests import conftest
from tests.model_fixtures import ATTRS, PREPROCESS, tiny_model, write_photo
from tests.test_cli import ok
from tests.test_train import TINY, metrics

runner = CliRunner()


@pytest.fixture
def data(make_celeba_hq, tmp_path):
    return make_celeba_hq(tmp_path, 48)


@pytest.fixture
def arch(monkeypatch):
    """The command line trains the tiny model of test_train (its architecture is no option of the CLI); a test
    may set other fields, e.g. arch.update(image_size=32, channels=(8, 8, 8))."""
    arch = dict(TINY)
    real = train_module.options_for
    # checkpoint_every: only the last epoch (and an interrupt) saves, whatever the speed of the machine
    monkeypatch.setattr(
        train_module, "options_for", lambda given: real({"arch": arch, "checkpoint_every": 1e9, **given})
    )
    return arch


def train_cli(data, out, *args):
    base = [
        "train",
        "--data",
        data,
        "--out",
        out,
        "--batch-size",
        "8",
        "--latent-dim",
        "4",
        "--val-fraction",
        "0.25",
        "--warmup-epochs",
        "0.5",
        "--device",
        "cpu",
        "--precision",
        "fp32",
    ]
    return runner.invoke(app, [str(a) for a in [*base, *args]])


# training prints its progress on stderr before the error line
fails = functools.partial(conftest.fails, after_report=True)


def snapshot(out):
    return {name: (out / name).read_bytes() for name in ("model.safetensors", "train_state.safetensors")}


def poison_training_from_step(monkeypatch, first_bad_step: int):
    """The training loss becomes NaN from the given (0-based) training step of this process on."""
    real_forward, calls = JMVAE.forward, []

    def poisoned(self, x, w, beta=1.0):
        terms = real_forward(self, x, w, beta)
        if self.training:
            calls.append(1)
            if len(calls) > first_bad_step:
                terms["loss"] = terms["loss"] * float("nan")
        return terms

    monkeypatch.setattr(JMVAE, "forward", poisoned)


# ----------------------------------------------------------------------------- divergence


def test_a_diverging_run_never_saves_non_finite_weights(data, tmp_path, arch):
    out = tmp_path / "run"
    ok(train_cli(data, out, "--epochs", "1", "--batch-size", "32"))  # one step per epoch
    before = snapshot(out)
    # The step of epoch 2 blows the weights up; the loss of that step was still finite, its validation is not.
    result = train_cli(data, out, "--resume", "--epochs", "2", "--batch-size", "32", "--lr", "1e30")
    fails(result, "validation gave", "nan", "diverged", "intact: epoch 1,")
    assert snapshot(out) == before
    assert [m["epoch"] for m in metrics(out)] == [1]


def test_non_finite_validation_is_divergence(data, tmp_path, arch, monkeypatch):
    out = tmp_path / "run"
    real_validate = train_module.validate

    def nan_validation(*args, **kw):
        return {**real_validate(*args, **kw), "bits_per_dim": float("nan")}

    monkeypatch.setattr(train_module, "validate", nan_validation)
    fails(train_cli(data, out, "--epochs", "1"), "validation gave bits_per_dim nan", "no checkpoint was saved")
    assert not (out / "model.safetensors").exists() and not (out / "metrics.jsonl").exists()


def test_the_divergence_message_names_the_checkpoint_on_disk(data, tmp_path, arch, monkeypatch):
    out = tmp_path / "run"
    ok(train_cli(data, out, "--epochs", "1"))
    steps_per_epoch = metrics(out)[0]["step"]
    poison_training_from_step(monkeypatch, 2 * steps_per_epoch)  # epoch 3 of the resumed run
    # epoch 2 ends without a save (checkpoint_every), so the checkpoint on disk stays epoch 1
    fails(train_cli(data, out, "--resume", "--epochs", "4"), "nan", "intact: epoch 1,")
    assert read_meta(out / "train_state.safetensors")["epochs_done"] == 1


def test_a_model_with_non_finite_weights_is_a_clear_error(tmp_path):
    model = tiny_model()
    with torch.no_grad():
        model.dec_w[-1].weight[0, 0] = float("nan")
    bad = tmp_path / "nan.safetensors"
    save_model(bad, model, {"attr_names": ATTRS, "preprocess": PREPROCESS})
    photo = write_photo(tmp_path / "photo.png")
    result = runner.invoke(app, ["img2attr", str(photo), "--no-detect", "--weights", str(bad), "-f", "json"])
    fails(result, str(bad), "non-finite")


def test_weights_whose_metadata_is_not_json(tmp_path):
    from safetensors.torch import save_file

    bad = tmp_path / "bad.safetensors"
    save_file({"w": torch.zeros(2)}, str(bad), metadata={"jmvae": "{not json"})
    fails(runner.invoke(app, ["attributes", "--weights", str(bad)]), str(bad), "metadata is not JSON")


# ----------------------------------------------------------------------------- kills and failing writes


class Killed(BaseException):
    """A kill -9 as the process sees it: nothing after this line runs (no except clause catches it)."""


def killed(*args, **kw):
    raise Killed


def test_a_stop_while_an_epoch_is_reported_reports_it_on_resume(data, tmp_path, arch, monkeypatch):
    out = tmp_path / "run"
    real, calls, stops = train_module.validate, [], {2}

    def ctrl_c_in_epoch_2(*args, **kw):  # the validations numbered in stops
        calls.append(1)
        if len(calls) in stops:
            stops.discard(len(calls))
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(train_module, "validate", ctrl_c_in_epoch_2)
    fails(train_cli(data, out, "--epochs", "3"), "interrupted: saved", code=130)
    steps = read_meta(out / "train_state.safetensors")["step"]
    assert [m["epoch"] for m in metrics(out)] == [1]
    ok(train_cli(data, out, "--resume", "--epochs", "3"))
    # epoch 2 reported once, at the step it ended on, and not trained again
    assert [(m["epoch"], m["step"]) for m in metrics(out)] == [(1, steps // 2), (2, steps), (3, steps * 3 // 2)]
    assert sorted(p.name for p in (out / "samples").iterdir()) == [f"epoch_00{i}.png" for i in (1, 2, 3)]
    # stopped while its last epoch is reported, a run is not "already trained": its resume writes the report
    stops.add(len(calls) + 1)
    fails(train_cli(data, out, "--resume", "--epochs", "4"), "interrupted: saved", code=130)
    ok(train_cli(data, out, "--resume", "--epochs", "4"))
    assert [m["epoch"] for m in metrics(out)] == [1, 2, 3, 4]
    fails(train_cli(data, out, "--resume", "--epochs", "4"), "already trained for 4 epochs")


def test_a_stop_inside_a_step_counts_the_step_whole(data, tmp_path, arch, monkeypatch):
    out = tmp_path / "run"
    ok(train_cli(data, out, "--epochs", "1", "--gan"))
    steps = read_meta(out / "train_state.safetensors")["step"]
    real, calls = train_module.Trainer.discriminator_step, []

    def ctrl_c_inside(self, x, fake):
        calls.append(1)
        if len(calls) == 3:  # after the model's update, before the discriminator's and the count
            os.kill(os.getpid(), signal.SIGINT)
        return real(self, x, fake)

    monkeypatch.setattr(train_module.Trainer, "discriminator_step", ctrl_c_inside)
    fails(train_cli(data, out, "--epochs", "2", "--gan", "--resume"), "interrupted: saved", code=130)
    meta = read_meta(out / "train_state.safetensors")
    assert (meta["step"], meta["epoch_batches_done"]) == (steps + 3, 3)  # the third step whole, not trained again


def test_resume_finds_the_data_from_another_folder(data, tmp_path, arch, monkeypatch):
    monkeypatch.chdir(data.parent)
    out = tmp_path / "run"
    ok(train_cli(data.name, out, "--epochs", "1"))  # --data typed relative to the folder the run started in
    monkeypatch.chdir(tmp_path.parent)
    ok(runner.invoke(app, ["train", "--out", str(out), "--resume", "--epochs", "2", "--device", "cpu"]))
    assert [m["epoch"] for m in metrics(out)] == [1, 2]


def test_a_kill_between_the_two_checkpoint_writes_is_repaired_on_resume(data, tmp_path, arch, monkeypatch):
    out = tmp_path / "run"
    ok(train_cli(data, out, "--epochs", "1"))
    real = train_module.save_model
    monkeypatch.setattr(train_module, "save_model", killed)  # after the training state of epoch 2 is written
    with pytest.raises(Killed):
        train_cli(data, out, "--resume", "--epochs", "2")
    assert read_meta(out / "train_state.safetensors")["epochs_done"] == 2
    assert read_meta(out / "model.safetensors")["epochs_done"] == 1
    monkeypatch.setattr(train_module, "save_model", real)
    result = fails(train_cli(data, out, "--resume", "--epochs", "2"), "already trained for 2 epochs")
    assert "exported it again" in result.stderr.replace("\n", " ")
    assert read_meta(out / "model.safetensors")["epochs_done"] == 2
    assert json.loads((out / "model.json").read_text())["epochs_done"] == 2
    assert load_model(out / "model.safetensors").meta["step"] == read_meta(out / "train_state.safetensors")["step"]


def test_after_a_kill_metrics_list_each_epoch_once(data, tmp_path, arch, monkeypatch):
    out = tmp_path / "run"
    ok(train_cli(data, out, "--epochs", "1"))
    real = train_module.save_train_state
    monkeypatch.setattr(train_module, "save_train_state", killed)
    with pytest.raises(Killed):  # epoch 2 is logged, then the kill comes before its checkpoint
        train_cli(data, out, "--resume", "--epochs", "2")
    assert [m["epoch"] for m in metrics(out)] == [1, 2]
    monkeypatch.setattr(train_module, "save_train_state", real)
    ok(train_cli(data, out, "--resume", "--epochs", "3"))
    assert [m["epoch"] for m in metrics(out)] == [1, 2, 3]
    assert sorted(p.name for p in (out / "samples").iterdir()) == [f"epoch_00{i}.png" for i in (1, 2, 3)]
    # --resume alone: every other option, --data too, is the saved run's; a new run without --data is a usage error
    ok(runner.invoke(app, ["train", "--out", str(out), "--resume", "--epochs", "4", "--device", "cpu"]))
    assert [m["epoch"] for m in metrics(out)] == [1, 2, 3, 4]
    r = runner.invoke(app, ["train", "--out", str(out.parent / "new")])
    assert r.exit_code == 2 and "--data" in r.output and not (out.parent / "new").exists()


def test_a_failed_checkpoint_write_keeps_the_previous_one_and_says_so(data, tmp_path, arch):
    out = tmp_path / "run"
    ok(train_cli(data, out, "--epochs", "1"))
    before = snapshot(out)
    # a file-size limit that the training state (the first file of a save) exceeds, and nothing else written
    limit = len(before["train_state.safetensors"]) // 2
    assert limit > 10 * max((out / name).stat().st_size for name in ("samples/epoch_001.png", "metrics.jsonl"))
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # so that the write fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        result = train_cli(data, out, "--resume", "--epochs", "2")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    fails(result, str(out / "train_state.safetensors"), "File too large", "intact: epoch 1,")
    assert snapshot(out) == before
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_a_run_that_fails_before_writing_leaves_no_folder(data, tmp_path, arch):
    out = tmp_path / "runs" / "new"
    fails(train_cli(tmp_path / "no-data", out, "--epochs", "1"), "no-data")
    assert not out.exists()
    out.mkdir(parents=True)  # a folder that was there before stays
    fails(train_cli(tmp_path / "no-data", out, "--epochs", "1"), "no-data")
    assert out.is_dir()


def test_out_that_is_a_file_or_cannot_be_written(data, tmp_path, arch):
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    fails(train_cli(data, a_file, "--epochs", "1"), str(a_file), "is a file, not a folder")
    fails(train_cli(data, a_file / "run", "--epochs", "1"), str(a_file / "run"), "Not a directory")
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    read_only.chmod(0o555)
    try:
        if os.access(read_only, os.W_OK):  # root writes anyway
            pytest.skip("this user can write in a read-only folder")
        fails(train_cli(data, read_only, "--epochs", "1"), str(read_only), "Permission denied")
    finally:
        read_only.chmod(0o755)


# ----------------------------------------------------------------------------- one run per folder


def test_a_second_run_into_a_busy_folder_is_refused(data, tmp_path, arch):
    out = tmp_path / "run"
    out.mkdir()
    with FileLock(out / LOCK_FILE):  # as the first run holds it
        fails(train_cli(data, out, "--epochs", "1"), str(out), "in use by another jmvae train")
    assert not (out / "metrics.jsonl").exists()
    ok(train_cli(data, out, "--epochs", "1"))  # free again


def test_a_model_file_without_a_run_is_not_overwritten(data, tmp_path, arch):
    out = tmp_path / "run"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"someone's model")
    fails(train_cli(data, out, "--epochs", "1"), "already holds a model.safetensors")
    assert (out / "model.safetensors").read_bytes() == b"someone's model"


# ----------------------------------------------------------------------------- resume


def test_resume_refuses_options_that_conflict_with_the_saved_run(data, tmp_path, arch):
    out = tmp_path / "run"
    ok(train_cli(data, out, "--epochs", "1"))
    before = snapshot(out)
    result = runner.invoke(
        app,
        [
            "train",
            "--data",
            str(data),
            "--out",
            str(out),
            "--resume",
            "--epochs",
            "2",
            "--latent-dim",
            "16",
            "--model",
            "vae",
            "--objective",
            "jmvae-zero",
        ],
    )
    fails(result, "--latent-dim 16 (saved: --latent-dim 4)", "--model vae", "--objective jmvae-zero", "--epochs")
    assert snapshot(out) == before
    # options not given are the saved run's: this resumes the 4-d model trained with batches of 8
    ok(
        runner.invoke(
            app, ["train", "--data", str(data), "--out", str(out), "--resume", "--epochs", "2", "--device", "cpu"]
        )
    )
    saved = load_model(out / "model.safetensors").meta
    assert saved["train"]["latent_dim"] == 4 and saved["train"]["batch_size"] == 8 and saved["epochs_done"] == 2


def test_help_lists_the_options_that_may_change_on_resume():
    result = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "300"})
    resume_help = next(line for line in result.stdout.splitlines() if "--resume" in line)
    assert all(f in resume_help for f in ("--epochs", "--lr", "--time-limit")) and "--latent-dim" not in resume_help


def test_stale_temporaries_of_dead_runs_are_removed_on_start(data, tmp_path, arch):
    out = tmp_path / "run"
    ok(train_cli(data, out, "--epochs", "1"))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = out / f".train_state.safetensors.{dead.pid}.0123abcd.tmp"
    live = out / f".model.safetensors.{os.getppid()}.0123abcd.tmp"  # a process that still runs: not ours to touch
    stale.write_bytes(b"half a checkpoint")
    live.write_bytes(b"a write under way")
    ok(train_cli(data, out, "--resume", "--epochs", "2"))
    assert not stale.exists() and live.exists()


# ----------------------------------------------------------------------------- small things


def test_time_limit_zero_is_not_no_limit(data, tmp_path, arch):
    result = train_cli(data, tmp_path / "run", "--epochs", "1", "--time-limit", "0")
    assert result.exit_code == 2 and "more than 0" in result.stderr
    with pytest.raises(JmvaeError, match="--time-limit must be more than 0"):
        TrainOptions(data=[data], out=tmp_path / "run", time_limit=0).check()


def test_no_validation_images_means_no_validation_figures(data, tmp_path, arch):
    out = tmp_path / "run"
    result = ok(train_cli(data, out, "--epochs", "1", "--val-fraction", "0", "--format", "json"))
    assert json.loads(result.stdout)["val"] is None and metrics(out)[0]["val"] is None
    assert "no validation images" in result.stderr and "attr_acc" not in result.stderr


def test_a_second_signal_during_the_interrupt_save_does_not_drop_it(data, tmp_path, arch, monkeypatch):
    out = tmp_path / "run"
    handler_before = signal.getsignal(signal.SIGINT)
    real_forward, calls = JMVAE.forward, []

    def ctrl_c_on_third_step(self, x, w, beta=1.0):
        if self.training:
            calls.append(1)
            if len(calls) == 3:
                raise KeyboardInterrupt
        return real_forward(self, x, w, beta)

    real_save = train_module.save_train_state

    def save_and_press_ctrl_c_again(*args, **kw):
        signal.raise_signal(signal.SIGINT)  # handled at once by Python: the moment the save is under way
        return real_save(*args, **kw)

    monkeypatch.setattr(JMVAE, "forward", ctrl_c_on_third_step)
    monkeypatch.setattr(train_module, "save_train_state", save_and_press_ctrl_c_again)
    result = train_cli(data, out, "--epochs", "5")
    assert result.exit_code == 130, result.output
    assert "saved the model at step 2" in result.stderr
    assert read_meta(out / "train_state.safetensors")["step"] == 2
    assert read_meta(out / "model.safetensors")["step"] == 2
    assert signal.getsignal(signal.SIGINT) is handler_before


def test_run_files_follow_the_umask(data, tmp_path, arch):
    out = tmp_path / "run"
    previous = os.umask(0o027)
    try:
        ok(train_cli(data, out, "--epochs", "1"))
    finally:
        os.umask(previous)
    for name in (
        "model.safetensors",
        "model.json",
        "train_state.safetensors",
        "train_state.json",
        "metrics.jsonl",
        "samples/epoch_001.png",
    ):
        assert (out / name).stat().st_mode & 0o777 == 0o640, name


# ----------------------------------------------------------------------------- image sizes


@pytest.mark.parametrize("size", [32, 128])
def test_discriminator_depth_follows_the_image_size(size):
    disc = Discriminator(width=4, image_size=size)
    assert disc(torch.zeros(2, 3, size, size)).shape == (2,)
    assert len(disc.convs) // 2 == {32: 3, 128: 5}[size]


def test_a_32_px_model_trains_resumes_and_trains_adversarially(make_celeba, tmp_path, arch):
    arch.update(image_size=32, channels=(8, 8, 8))
    data = make_celeba(tmp_path, 48)  # 178x218 photos: cut and resized to 32 px by the model's preprocessing
    out = tmp_path / "run"
    ok(train_cli(data, out, "--epochs", "1", "--gan"))
    ok(train_cli(data, out, "--epochs", "2", "--gan", "--resume"))
    loaded = load_model(out / "model.safetensors")
    assert loaded.model.cfg.image_size == 32 and loaded.meta["preprocess"]["size"] == 32
    from PIL import Image

    with Image.open(out / "samples" / "epoch_002.png") as grid:
        assert grid.size == (8 * 32, 4 * 32)  # 8 faces; faces, reconstructions, img->attr->img, attr->img
