import json

import pytest
import torch
from safetensors.torch import save_file

from jmvae_cli.bundled import bundled_weights
from jmvae_cli.checkpoint import (
    DEFAULT_WEIGHTS_NAME,
    WeightsError,
    count_nonfinite,
    default_weights,
    load_model,
    load_train_state,
    read_meta,
    rewrite_stale_sidecar,
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


def test_weights_are_not_written_where_their_metadata_or_a_folder_would_clash(tmp_path):
    model = trained_tiny_model()
    (tmp_path / "d").mkdir()
    for bad, words in [("m.json", "name the weights"), ("d", "is a folder"), ("nope/m.safetensors", "does not exist")]:
        with pytest.raises(WeightsError, match=words):
            save_model(tmp_path / bad, model, META)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"] and not list((tmp_path / "d").iterdir())


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
    with pytest.raises(WeightsError, match="training state, not a model: use the model.safetensors"):
        load_model(tmp_path / "s.safetensors")  # given as --weights or --init by mistake


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


def test_metadata_that_is_not_json_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.safetensors"
    save_file({"w": torch.zeros(2)}, str(bad), metadata={"jmvae": "{not json"})
    for read in (load_model, read_meta):
        with pytest.raises(WeightsError, match="metadata is not JSON"):
            read(bad)


def test_non_finite_weights_are_never_loaded(tmp_path):
    model = trained_tiny_model()
    with torch.no_grad():
        model.dec_w[-1].bias[:2] = torch.tensor([float("nan"), float("inf")])
    path = tmp_path / "m.safetensors"
    save_model(path, model, META)
    with pytest.raises(WeightsError, match="2 non-finite weights"):
        load_model(path)


def test_non_finite_values_are_counted_exactly():
    huge = torch.full((4,), 3e38)  # finite values whose sum overflows
    mixed = torch.tensor([1.0, float("nan"), float("-inf"), float("inf")])
    assert count_nonfinite([huge, torch.arange(3), torch.ones(5)]) == 0
    assert count_nonfinite(t for t in [huge, mixed, mixed.half()]) == 6


def test_read_meta_reads_the_header_and_stale_sidecars_are_rewritten(tmp_path):
    path = tmp_path / "m.safetensors"
    save_model(path, trained_tiny_model(), {**META, "step": 3})
    assert read_meta(path)["step"] == 3 and read_meta(path)["kind"] == "model"
    assert not rewrite_stale_sidecar(path)
    path.with_suffix(".json").write_text('{"step": 2}')  # as a kill between the two writes leaves it
    assert rewrite_stale_sidecar(path)
    assert json.loads(path.with_suffix(".json").read_text()) == read_meta(path)


def test_the_bundled_model_loads():
    loaded = load_model(bundled_weights(DEFAULT_WEIGHTS_NAME))
    assert loaded.model.cfg.image_size == 64 and len(loaded.attr_names) == 40


def test_the_bundled_edit_cells_agree_with_their_metadata_and_todays_calibrate_config():
    # the bundled cells were set by hand more than once: the tensors edits use and the metadata people read must say
    # the same, and a change to CalibrateConfig's defaults must come with the cells calibrated again
    from dataclasses import asdict

    from jmvae_cli.edit_directions import CalibrateConfig

    loaded = load_model(bundled_weights(DEFAULT_WEIGHTS_NAME))
    edit, c = loaded.meta["edit"], loaded.model.edit_constants
    assert edit["config"] == json.loads(json.dumps(asdict(CalibrateConfig())))
    for i, name in enumerate(loaded.attr_names):
        for j, way in enumerate(("off", "on")):
            assert float(c.powers[i, j]) == edit["powers"][name][way], (name, way)
            assert bool(c.local[i, j]) == edit["local"][name][way], (name, way)
            assert bool(c.drawn[i, j]) == edit["drawn"][name][way], (name, way)
