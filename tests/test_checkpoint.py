import json

import pytest
import torch
from safetensors.torch import save_file

from jmvae_cli.checkpoint import (
    WeightsError,
    default_weights,
    load_model,
    load_train_state,
    save_model,
    save_train_state,
)
from jmvae_cli.model import JMVAE
from tests.test_model import tiny_config

META = {"attr_names": ["A", "B", "C", "D", "E"], "preprocess": {"size": 16}}


def trained_tiny_model() -> JMVAE:
    torch.manual_seed(0)
    model = JMVAE(tiny_config())
    model(torch.rand(4, 3, 16, 16) * 2 - 1, (torch.rand(4, 5) > 0.5).float())  # moves the batch-norm statistics
    return model.eval()


def test_model_round_trip_keeps_outputs(tmp_path):
    model = trained_tiny_model()
    path = tmp_path / "m.safetensors"
    save_model(path, model, META)
    loaded = load_model(path)
    assert loaded.attr_names == META["attr_names"]
    assert loaded.model.cfg == model.cfg
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    # fp16 storage: outputs agree to fp16 precision
    assert torch.allclose(loaded.model.q_x(x).mu, model.q_x(x).mu, atol=1e-2)
    assert json.loads(path.with_suffix(".json").read_text())["attr_names"] == META["attr_names"]
    assert not list(tmp_path.glob("*.tmp"))


def test_train_state_round_trip_is_exact(tmp_path):
    model = trained_tiny_model().train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.rand(4, 3, 16, 16) * 2 - 1, (torch.rand(4, 5) > 0.5).float())["loss"].backward()
    opt.step()
    save_train_state(tmp_path / "s.safetensors", {"model": model}, {"optimizer": opt}, {**META, "step": 7})
    states, opt_states, meta = load_train_state(tmp_path / "s.safetensors")
    assert meta["step"] == 7
    for k, v in model.state_dict().items():
        assert torch.equal(states["model"][k], v)
    opt2 = torch.optim.Adam(JMVAE(tiny_config()).parameters(), lr=1e-3)
    opt2.load_state_dict(opt_states["optimizer"])
    for i, s in opt.state_dict()["state"].items():
        assert torch.equal(opt2.state_dict()["state"][i]["exp_avg"], s["exp_avg"])


def test_not_safetensors_is_a_clear_error(tmp_path):
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"PK\x03\x04 this is a zip, say a torch pickle")
    with pytest.raises(WeightsError, match="not a readable safetensors"):
        load_model(bad)


def test_safetensors_that_is_not_a_jmvae_model(tmp_path):
    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other))
    with pytest.raises(WeightsError, match="not a jmvae model"):
        load_model(other)


def test_missing_weights_and_mismatched_tensors(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        load_model(tmp_path / "nope.safetensors")
    path = tmp_path / "m.safetensors"
    save_model(path, trained_tiny_model(), META)
    meta = json.loads(path.with_suffix(".json").read_text())
    meta["config"]["latent_dim"] = 9  # a config that no longer matches the tensors
    from safetensors.torch import load_file

    save_file(load_file(str(path)), str(path), metadata={"jmvae": json.dumps(meta)})
    with pytest.raises(WeightsError, match="does not match"):
        load_model(path)


def test_default_weights_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("JMVAE_WEIGHTS", str(tmp_path / "w.safetensors"))
    assert default_weights() == tmp_path / "w.safetensors"
    monkeypatch.delenv("JMVAE_WEIGHTS")
    assert default_weights().name == "default.safetensors"
