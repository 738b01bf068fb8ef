import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from jmvae_cli.checkpoint import load_model, load_train_state
from jmvae_cli.cli import app
from jmvae_cli.errors import JmvaeError
from jmvae_cli.model import JMVAE
from jmvae_cli.train import Interrupted, Trainer, TrainingError, TrainOptions, options_for, train, update_ema

TINY = {"channels": (8, 8, 8, 8), "image_features": 16, "attr_hidden": 16, "joint_hidden": 16}
REPO = Path(__file__).resolve().parents[1]


def options(data: Path, out: Path, **kw) -> TrainOptions:
    base = dict(
        data=[data],
        out=out,
        epochs=2,
        batch_size=8,
        lr=3e-3,
        latent_dim=4,
        val_fraction=0.25,
        progress=False,
        warmup_epochs=0.5,
        arch=TINY,
        device="cpu",
    )
    return TrainOptions(**{**base, **kw})


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def data(make_celeba_hq, tmp_path) -> Path:
    return make_celeba_hq(tmp_path, 48)


def test_training_lowers_the_loss_and_writes_everything(data, tmp_path):
    out = tmp_path / "run"
    train(options(data, out, epochs=4))
    m = metrics(out)
    assert [e["epoch"] for e in m] == [1, 2, 3, 4]
    assert m[-1]["train"]["rec_x"] < m[0]["train"]["rec_x"]
    assert {"rec_x", "rec_w", "kl", "kl_x", "kl_w", "bits_per_dim", "attr_acc"} <= set(m[-1]["val"])
    assert len(m[-1]["val"]["attr_acc_per"]) == 40
    loaded = load_model(out / "model.safetensors")
    assert loaded.meta["epochs_done"] == 4 and loaded.meta["preprocess"]["size"] == 64
    assert sorted(p.name for p in (out / "samples").iterdir()) == [f"epoch_00{i}.png" for i in (1, 2, 3, 4)]


def test_resume_continues_the_step_count(data, tmp_path):
    out = tmp_path / "run"
    train(options(data, out, epochs=1))
    steps_per_epoch = metrics(out)[0]["step"]
    train(options(data, out, epochs=3, resume=True))
    assert [e["step"] for e in metrics(out)] == [steps_per_epoch, 2 * steps_per_epoch, 3 * steps_per_epoch]
    assert load_train_state(out / "train_state.safetensors")[2]["epochs_done"] == 3


def test_cli_trains_and_reports_json(data, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--data", str(data), "--out", str(out), "--epochs", "1", "--batch-size", "16", "--format", "json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["epoch"] == 1 and report == metrics(out)[-1]
    assert "saved" in result.stderr


def test_existing_run_is_never_overwritten(data, tmp_path):
    out = tmp_path / "run"
    train(options(data, out, epochs=1))
    before = (out / "model.safetensors").read_bytes()
    result = CliRunner().invoke(app, ["train", "--data", str(data), "--out", str(out), "--epochs", "1"])
    assert result.exit_code == 1
    assert "--resume" in result.stderr
    assert (out / "model.safetensors").read_bytes() == before
    result = CliRunner().invoke(app, ["train", "--data", str(data), "--out", str(tmp_path / "new"), "--resume"])
    assert result.exit_code == 1 and "no train_state" in result.stderr


def test_nan_loss_stops_with_the_last_checkpoint_intact(data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    train(options(data, out, epochs=1, precision="fp32"))
    good = load_model(out / "model.safetensors").model.state_dict()
    real_forward = JMVAE.forward

    def poisoned(self, x, w, beta=1.0):
        terms = real_forward(self, x, w, beta)
        terms["loss"] = terms["loss"] * float("nan")
        return terms

    monkeypatch.setattr(JMVAE, "forward", poisoned)
    with pytest.raises(TrainingError, match="nan.*intact"):
        train(options(data, out, epochs=2, resume=True, precision="fp32"))
    after = load_model(out / "model.safetensors").model.state_dict()
    assert all(torch.equal(good[k], after[k]) for k in good)
    assert len(metrics(out)) == 1


def ctrl_c():
    raise KeyboardInterrupt


def sigterm():
    signal.raise_signal(signal.SIGTERM)


@pytest.mark.parametrize("stop", [ctrl_c, sigterm])
def test_ctrl_c_and_sigterm_save_and_exit_cleanly(data, tmp_path, monkeypatch, stop):
    out = tmp_path / "run"
    real_forward, calls = JMVAE.forward, []
    handler_before = signal.getsignal(signal.SIGTERM)

    def interrupt_on_third_step(self, x, w, beta=1.0):
        if self.training:
            calls.append(1)
            if len(calls) == 3:
                stop()
        return real_forward(self, x, w, beta)

    monkeypatch.setattr(JMVAE, "forward", interrupt_on_third_step)
    with pytest.raises(Interrupted):
        train(options(data, out, epochs=5))
    assert load_train_state(out / "train_state.safetensors")[2]["step"] == 2
    assert signal.getsignal(signal.SIGTERM) is handler_before
    monkeypatch.setattr(JMVAE, "forward", real_forward)
    train(options(data, out, epochs=1, resume=True))  # the saved state resumes
    assert metrics(out)[0]["step"] > 2


@pytest.mark.parametrize("model", ["vae", "cvae", "cmma", "classifier"])
def test_baselines_train_and_round_trip(data, tmp_path, model):
    out = tmp_path / model
    train(options(data, out, epochs=1, model=model))
    loaded = load_model(out / "model.safetensors")
    assert loaded.model.cfg.model == model
    if model != "classifier":
        assert "bits_per_dim" in metrics(out)[0]["val"]
    # --gan fine-tunes a JMVAE's decoder: a baseline given by --init is refused by its own kind, in one line
    with pytest.raises(JmvaeError, match=f"does not apply to a {model} model"):
        train(options(data, tmp_path / "gan", epochs=1, gan=True, init=out / "model.safetensors"))


def test_gan_trains_both_players_and_resumes_both(data, tmp_path):
    out = tmp_path / "gan"
    train(options(data, out, epochs=1, gan=True))
    states, opts, _ = load_train_state(out / "train_state.safetensors")
    assert {"model", "discriminator"} <= set(states) and {"optimizer", "disc_optimizer"} <= set(opts)
    m = metrics(out)[0]["train"]
    assert all(map(lambda v: v == v and abs(v) < float("inf"), [m["gen"], m["disc"], m["loss"]]))
    train(options(data, out, epochs=2, gan=True, resume=True))
    states2, opts2, _ = load_train_state(out / "train_state.safetensors")
    for name in ("model", "discriminator"):  # both players moved
        assert any(not torch.equal(states[name][k], states2[name][k]) for k in states[name] if "weight" in k)
    assert opts2["disc_optimizer"]["state"][0]["step"] > opts["disc_optimizer"]["state"][0]["step"]
    with pytest.raises(Exception, match="--gan"):
        train(options(data, out, epochs=3, resume=True))  # resuming a GAN run without --gan


def test_init_fine_tunes_from_a_model_file(data, tmp_path):
    train(options(data, tmp_path / "a", epochs=1))
    train(options(data, tmp_path / "b", epochs=1, init=tmp_path / "a" / "model.safetensors", alpha=2.0))
    b = load_model(tmp_path / "b" / "model.safetensors")
    assert b.model.cfg.alpha == 2.0 and b.meta["train"]["init"].endswith("model.safetensors")
    # what shapes the model comes from the init: given otherwise, one line rather than silently ignored
    for kw, said in [({"latent_dim": 8}, "--latent-dim 8 (the model's: 4)"), ({"model": "vae"}, "--model vae")]:
        with pytest.raises(JmvaeError, match=re.escape(said)):
            train(options(data, tmp_path / "c", epochs=1, init=tmp_path / "a" / "model.safetensors", **kw))
    # typed on the command line, even at its default value (the init's is 4)
    args = ["train", "--data", data, "--out", tmp_path / "c", "--init", tmp_path / "a" / "model.safetensors"]
    r = CliRunner().invoke(app, [str(a) for a in [*args, "--latent-dim", "128", "--device", "cpu"]])
    assert r.exit_code == 1 and "--latent-dim 128 (the model's: 4)" in r.stderr and not (tmp_path / "c").exists()


def test_a_spent_time_limit_is_said_on_resume_not_trained_a_step_further(data, tmp_path):
    out = tmp_path / "t"
    train(options(data, out, epochs=50, time_limit=0.0005))  # 30 ms: it stops long before 50 epochs
    meta = load_model(out / "model.safetensors").meta
    done, logged = meta["epochs_done"], metrics(out)
    assert done < 50 and meta["epoch_batches_done"] > 0  # cut short within an epoch, which is not counted done
    assert [m["epoch"] for m in logged] == list(range(1, done + 2))  # the epoch cut short is logged too
    with pytest.raises(JmvaeError, match="raise --time-limit to train on"):
        train(options(data, out, epochs=50, time_limit=0.0005, resume=True))
    assert metrics(out) == logged  # nothing trained, nothing logged
    train(options(data, out, epochs=done + 1, time_limit=10, resume=True))
    meta = load_model(out / "model.safetensors").meta
    assert meta["epochs_done"] == done + 1 and meta["epoch_batches_done"] == 0
    # the epoch cut short was finished from where it stopped, and logged once
    steps_per_epoch = logged[0]["step"] if done else metrics(out)[-1]["step"] // (done + 1)
    assert meta["step"] == (done + 1) * steps_per_epoch
    assert [m["epoch"] for m in metrics(out)] == list(range(1, done + 2))


def test_a_run_stopped_mid_epoch_goes_on_from_the_next_batch(data, tmp_path, monkeypatch, capsys, make_celeba_hq):
    out = tmp_path / "s"
    train(options(data, out, epochs=1, batch_size=4))  # 9 steps an epoch
    steps_per_epoch = metrics(out)[0]["step"]
    real_step, calls, stopped = Trainer.train_step, [], []

    def ctrl_c_in_epoch_2(self, x, w):
        calls.append(1)
        if len(calls) == 4 and not stopped:
            stopped.append(1)
            raise KeyboardInterrupt
        return real_step(self, x, w)

    monkeypatch.setattr(Trainer, "train_step", ctrl_c_in_epoch_2)
    with pytest.raises(Interrupted):
        train(options(data, out, epochs=2, batch_size=4, resume=True))
    meta = load_model(out / "model.safetensors").meta
    assert (meta["epochs_done"], meta["epoch_batches_done"], meta["step"]) == (1, 3, steps_per_epoch + 3)
    calls.clear()
    train(options(data, out, epochs=2, batch_size=4, resume=True))
    assert len(calls) == steps_per_epoch - 3  # each batch of epoch 2 trained once
    assert [(m["epoch"], m["step"]) for m in metrics(out)] == [(1, steps_per_epoch), (2, 2 * steps_per_epoch)]
    # stopped within epoch 3, resumed on other data: the position means other images there, the epoch starts over
    stopped.clear()
    calls.clear()
    with pytest.raises(Interrupted):
        train(options(data, out, epochs=3, batch_size=4, resume=True))
    other = make_celeba_hq(tmp_path / "other", 60)
    train(options(other, out, epochs=3, batch_size=4, resume=True))
    assert "epoch 3 with other processes or data than these: that epoch starts over" in capsys.readouterr().err
    assert load_model(out / "model.safetensors").meta["epoch_batches_done"] == 0


def test_train_only_the_image_decoder_leaves_everything_else_bit_identical(data, tmp_path):
    train(options(data, tmp_path / "a", epochs=1))
    before = load_model(tmp_path / "a" / "model.safetensors").model.state_dict()
    train(
        options(
            data,
            tmp_path / "b",
            epochs=2,
            init=tmp_path / "a" / "model.safetensors",
            train_only="image-decoder",
            gan=True,
        )
    )
    after = load_model(tmp_path / "b" / "model.safetensors").model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    # batch norm's running statistics included: a frozen module stays in eval mode while the decoder trains
    assert changed and all(k.startswith("dec_x.") for k in changed)
    assert any(k.startswith("dec_x.") and "running_mean" in k for k in changed)


def test_a_wider_decoder_learns_on_the_init_models_frozen_encoders(data, tmp_path, capsys, monkeypatch):
    train(options(data, tmp_path / "a", epochs=1))
    before = load_model(tmp_path / "a" / "model.safetensors").model
    init = tmp_path / "a" / "model.safetensors"
    train(options(data, tmp_path / "b", epochs=1, init=init, train_only="image-decoder", decoder_width=2.0))
    assert "with a new image decoder 2x as wide" in capsys.readouterr().err.replace("\n", " ")
    after = load_model(tmp_path / "b" / "model.safetensors").model
    assert after.cfg.decoder_width == 2
    assert after.dec_x.out.in_channels == 2 * before.dec_x.out.in_channels
    kept = {k: v for k, v in before.state_dict().items() if not k.startswith("dec_x.")}
    assert all(torch.equal(v, after.state_dict()[k]) for k, v in kept.items())
    # resumed as the command line resumes it, with only what the user typed given: the width comes from the run
    train(options_for({"data": [data], "out": tmp_path / "b", "epochs": 2, "resume": True, "progress": False}))
    resumed = load_model(tmp_path / "b" / "model.safetensors")
    assert resumed.meta["epochs_done"] == 2 and resumed.model.cfg.decoder_width == 2
    # a run copied to the default folder resumes there, not in the folder it was saved from
    shutil.copytree(tmp_path / "b", tmp_path / "runs" / "jmvae")
    monkeypatch.chdir(tmp_path)
    assert options_for({"data": [data], "resume": True}).out == Path("runs/jmvae")
    # a further fine-tune of the wide model keeps its decoder unless told otherwise
    train(
        options(data, tmp_path / "c", epochs=1, init=tmp_path / "b" / "model.safetensors", train_only="image-decoder")
    )
    assert load_model(tmp_path / "c" / "model.safetensors").model.cfg.decoder_width == 2


def test_a_compiled_step_trains_the_same_model(data, tmp_path, capsys):
    # on the CPU inductor fuses the step's kernels (a GPU replays them as CUDA graphs): the same run, up to rounding
    train(options(data, tmp_path / "plain", epochs=2))
    train(options(data, tmp_path / "compiled", epochs=2, compile=True))
    assert ", compiled" in capsys.readouterr().err.replace("\n", " ")
    plain, compiled = metrics(tmp_path / "plain"), metrics(tmp_path / "compiled")
    assert compiled[-1]["train"]["rec_x"] < compiled[0]["train"]["rec_x"]
    for a, b in zip(plain, compiled, strict=True):
        assert abs(a["val"]["bits_per_dim"] - b["val"]["bits_per_dim"]) < 0.01


def test_a_failing_compiler_is_one_clear_error(data, tmp_path, monkeypatch):
    def no_compiler(module, mode=None):
        def step(*args):
            raise torch._dynamo.exc.TorchDynamoException("no C++ compiler found\nlong details")

        return step

    monkeypatch.setattr(torch, "compile", no_compiler)
    with pytest.raises(JmvaeError, match=r"--compile: torch.compile failed \(no C\+\+ compiler found\); train without"):
        train(options(data, tmp_path / "a", epochs=1, compile=True))


def test_train_only_needs_a_trained_model_to_start_from(data, tmp_path):
    with pytest.raises(JmvaeError, match="--init"):
        train(options(data, tmp_path / "a", epochs=1, train_only="image-decoder"))


def test_reframe_moves_half_the_faces_by_at_most_the_amount():
    from jmvae_cli.model import pixels_to_input
    from jmvae_cli.train import reframe

    torch.manual_seed(0)
    u8 = torch.zeros(64, 32, 32, 3, dtype=torch.uint8)
    u8[:, 15:17, 15:17] = 255  # a bright dot in the middle of each face
    x = pixels_to_input(u8)  # (64, 3, 32, 32)
    out = reframe(x, 0.1)
    moved = (out != x).flatten(1).any(1)  # (64,)
    assert 16 < int(moved.sum()) < 48  # about half
    assert torch.equal(out[~moved], x[~moved])
    assert torch.equal(out, pixels_to_input(((out + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)))
    # the dot's centre of mass stays within the shift (0.1 of 32 px) plus what scale and turn move the middle
    grey = (out[moved].mean(1) + 1).clamp_min(0)  # (m, 32, 32)
    ys, xs = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    cy, cx = (grey * ys).sum((1, 2)) / grey.sum((1, 2)), (grey * xs).sum((1, 2)) / grey.sum((1, 2))
    off = torch.stack([cy - 15.5, cx - 15.5], 1).abs()
    assert off.max() <= 0.1 * 32 * 1.2 and off.max() > 0.5
    assert torch.equal(reframe(x, 0.0), x)


def test_jitter_trains_through_the_cli_and_is_kept_on_resume(data, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--data", str(data), "--out", str(out), "--epochs", "1", "--batch-size", "16", "--jitter", "0.05"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.stderr
    assert load_model(out / "model.safetensors").meta["train"]["jitter"] == 0.05
    result = CliRunner().invoke(app, [*args[:6], "2", "--resume", "--jitter", "0.1"])
    assert result.exit_code != 0 and "jitter" in result.stderr


def test_update_ema_averages_weights_and_batch_norm_statistics():
    model, ema = torch.nn.BatchNorm1d(3), torch.nn.BatchNorm1d(3)
    with torch.no_grad():
        model.weight.fill_(2.0)
        model.running_mean.fill_(1.0)
        model.num_batches_tracked.fill_(7)
    update_ema(ema, model, decay=0.75)  # ema starts at weight 1, running mean 0
    assert torch.allclose(ema.weight, torch.full((3,), 1.25))
    assert torch.allclose(ema.running_mean, torch.full((3,), 0.25))
    assert ema.num_batches_tracked.item() == 7


def test_ema_is_what_gets_validated_saved_and_resumed(data, tmp_path):
    out = tmp_path / "run"
    train(options(data, out, epochs=2, ema=0.9))
    states, _, _ = load_train_state(out / "train_state.safetensors")
    saved = load_model(out / "model.safetensors").model.state_dict()  # stored in fp16, loaded as fp32
    weights = [k for k in saved if k.endswith("weight")]
    assert all(torch.equal(saved[k], states["ema"][k].half().float()) for k in weights)
    assert not all(torch.equal(saved[k], states["model"][k].half().float()) for k in weights)
    train(options(data, out, epochs=3, ema=0.9, resume=True))
    assert load_train_state(out / "train_state.safetensors")[2]["epochs_done"] == 3
    with pytest.raises(JmvaeError, match="--ema"):
        train(options(data, out, epochs=4, resume=True))


def test_two_process_ddp_on_gloo(data, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    # --standalone: a free port, so concurrent runs on one host cannot meet on a fixed one
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "jmvae_cli",
        "train",
        "--data",
        str(data),
        "--out",
        str(out),
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--latent-dim",
        "4",
        "--device",
        "cpu",
        "--val-fraction",
        "0.25",
        "--format",
        "json",
    ]
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the workers too, not just torchrun
        _, stderr = proc.communicate()
        pytest.fail(f"torchrun hung; its stderr ends with:\n{stderr[-3000:]}")
    assert proc.returncode == 0, stderr[-2000:]
    assert "2 processes" in stderr
    # rank 0 alone reports: one "saved" line, one JSON record of metrics
    assert stderr.count("saved ") == 1 and json.loads(stdout)["epoch"] == 1
    m = metrics(out)
    assert len(m) == 1  # rank 0 alone writes
    train_images = load_model(out / "model.safetensors").meta["data"]["train_images"]
    assert m[0]["step"] == train_images // (2 * 8)  # each of 2 ranks took its own shard
