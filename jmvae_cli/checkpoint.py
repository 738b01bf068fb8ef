"""Weights on disk: safetensors tensors plus JSON metadata in the same file's header. Never pickle.

Two kinds of file, both written atomically (temp file + rename), so a kill at any moment leaves the previous one
readable:
  train_state.safetensors  the checkpoint of a run: fp32 model and optimizer state, for `jmvae train --resume`
  model.safetensors        the model alone, exported from the checkpoint, fp16 where that is lossless enough, for
                           inference and for bundling; its metadata rebuilds the model (config, attribute names,
                           preprocessing, how it was trained)
Training writes the state first and the model after it, and both say which step they hold: a run cut between the
two writes has a complete checkpoint, and its export is brought up to date from it on resume (train.py).
A JSON copy of the metadata is written beside each, for people and for jq; the loader reads the header.
A model file may also carry the constants of the `regress` edit (edit_directions.py: tensors under "edit.", their
strengths in the metadata's "edit" entry), added by `jmvae calibrate`; the loader hands them to the model as
`model.edit_constants` (None for files without them).
Non-finite weights (a diverged run) are never loaded: they would give NaN probabilities and black faces.
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from jmvae_cli.bundled import bundled_weights
from jmvae_cli.errors import JmvaeError
from jmvae_cli.files import atomic_write
from jmvae_cli.model import JMVAEConfig
from jmvae_cli.registry import model_class

FORMAT = "jmvae"
FORMAT_VERSION = 1
DEFAULT_WEIGHTS_NAME = "default.safetensors"
FP16_MAX = 60000.0  # values beyond fp16's range stay fp32


class WeightsError(JmvaeError):
    pass


def check_weights_output(path: str | Path) -> Path:
    """WeightsError where a weights file cannot be written at `path`, checked before the work that makes it: a
    missing folder, a folder in the way, or a .json name, which the metadata beside it (NAME.json) would overwrite."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        raise WeightsError(f"{path}: its metadata is written beside it as NAME.json: name the weights NAME.safetensors")
    if path.is_dir():
        raise WeightsError(f"{path}: is a folder, not a weights file")
    if not path.parent.is_dir():
        raise WeightsError(f"{path}: output folder {str(path.parent)!r} does not exist")
    return path


def _write(path: Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    check_weights_output(path)
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, **meta}
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write(path, st_save(tensors, metadata={FORMAT: json.dumps(meta)}))
    atomic_write(path.with_suffix(".json"), (json.dumps(meta, indent=2) + "\n").encode())


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    try:
        data = path.read_bytes()
        tensors = st_load(data)
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + header_len])
    except (SafetensorError, ValueError, UnicodeDecodeError, OSError) as e:
        raise WeightsError(f"{path} is not a readable safetensors weights file ({e})") from None
    return tensors, _meta(path, header.get("__metadata__"))


def _meta(path: Path, metadata: dict | None) -> dict:
    meta_json = (metadata or {}).get(FORMAT)
    if meta_json is None:
        raise WeightsError(f"{path} is a safetensors file but not a jmvae model (no '{FORMAT}' metadata)")
    try:
        meta = json.loads(meta_json)
    except ValueError as e:
        raise WeightsError(f"{path}: its '{FORMAT}' metadata is not JSON ({e})") from None
    if not isinstance(meta, dict):
        raise WeightsError(f"{path}: its '{FORMAT}' metadata is not a JSON object")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise WeightsError(f"{path} was written by a newer jmvae (format {meta['format_version']}); upgrade jmvae")
    return meta


def read_meta(path: Path) -> dict:
    """The metadata of a weights file, from its header alone: cheap for a 100 MB training state."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    try:
        with safe_open(str(path), "pt") as f:
            metadata = f.metadata()
    except (SafetensorError, ValueError, OSError) as e:
        raise WeightsError(f"{path} is not a readable safetensors weights file ({e})") from None
    return _meta(path, metadata)


def count_nonfinite(tensors) -> int:
    """How many NaN or infinite values the floating-point tensors among `tensors` hold."""
    # A sum is finite only where every term is, so only a tensor whose sum is not needs counting: every load checks
    # the weights, and a cold `img2attr` pays for it (docs/results.md, "Start-up")
    return sum(
        int(t.numel() - torch.isfinite(t).sum())
        for t in tensors
        if t.is_floating_point() and not torch.isfinite(t.sum())
    )


def rewrite_stale_sidecar(path: Path) -> bool:
    """Rewrite the JSON copy beside `path` if it is missing or no longer says what the header says (a kill between
    the two writes). Returns whether it did."""
    path = Path(path)
    meta, sidecar = read_meta(path), path.with_suffix(".json")
    try:
        if json.loads(sidecar.read_text()) == meta:
            return False
    except (OSError, ValueError):
        pass
    atomic_write(sidecar, (json.dumps(meta, indent=2) + "\n").encode())
    return True


# ----------------------------------------------------------------------------- the model file


@dataclass
class Loaded:
    model: torch.nn.Module
    meta: dict
    path: Path

    @property
    def attr_names(self) -> list[str]:
        return self.meta["attr_names"]


def save_model(path: Path, model: torch.nn.Module, meta: dict) -> None:
    """meta must hold 'attr_names' and 'preprocess'; the config is taken from the model."""
    tensors = {}
    for name, t in model.state_dict().items():
        if t.is_floating_point() and t.abs().max() < FP16_MAX:
            t = t.half()  # halves the file: the bundled model must stay under 25 MB
        tensors[name] = t
    _write(Path(path), tensors, {"kind": "model", "config": model.cfg.to_dict(), **meta})


def model_meta(state_meta: dict) -> dict:
    """The metadata of a training state that its exported model file carries too (save_model adds the rest)."""
    state_only = ("format", "format_version", "kind", "config", "param_groups")
    return {k: v for k, v in state_meta.items() if k not in state_only}


def build_model(meta: dict, path: Path) -> torch.nn.Module:
    """The model the config in `meta` describes, without weights (on the meta device), for load_model to assign the
    file's: random initial weights, which they replace, cost every start."""
    try:
        cfg = JMVAEConfig.from_dict(meta["config"])
        make = model_class(cfg.model)  # its module imported outside the device context, which would take its tensors
        with torch.device("meta"):
            return make(cfg)
    except (KeyError, TypeError, ValueError) as e:
        raise WeightsError(f"{path} holds a jmvae model this version cannot rebuild ({e})") from None


def load_model(path: Path, device: torch.device | str = "cpu") -> Loaded:
    from jmvae_cli.edit_directions import EDIT_PREFIX, EditConstants

    tensors, meta = _read(path)
    if meta.get("kind") == "train_state":
        raise WeightsError(f"{path} is a run's training state, not a model: use the model.safetensors beside it")
    bad = count_nonfinite(tensors.values())
    if bad:
        raise WeightsError(
            f"{path} holds {bad} non-finite weights (NaN or infinity), the mark of a training run that diverged; "
            "retrain it or use an earlier copy"
        )
    edit = {k: tensors.pop(k) for k in [k for k in tensors if k.startswith(EDIT_PREFIX)]}
    model = build_model(meta, path)
    try:
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}, assign=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise WeightsError(f"{path} does not match its own model config: {first}") from None
    model = model.to(device).eval()
    constants = EditConstants.from_file(edit, meta)
    model.edit_constants = None if constants is None else constants.to(device)
    return Loaded(model, meta, Path(path))


def save_edit_constants(src: Path, dst: Path, tensors: dict[str, torch.Tensor], edit_meta: dict) -> None:
    """Write the model file `src` to `dst` (it may be `src` itself) with the edit constants `tensors` (named
    under edit_directions.EDIT_PREFIX) and the metadata entry "edit" in place of any it had; the model's own
    tensors are copied as they are."""
    from jmvae_cli.edit_directions import EDIT_PREFIX

    old, meta = _read(src)
    if meta.get("kind") != "model":
        raise WeightsError(f"{src} is not a model file (kind {meta.get('kind')!r})")
    kept = {k: v for k, v in old.items() if not k.startswith(EDIT_PREFIX)}
    _write(Path(dst), kept | tensors, {**meta, "edit": edit_meta})


def default_weights() -> Path:
    """JMVAE_WEIGHTS if set, else the model bundled with the package (weights/ in the repository)."""
    env = os.environ.get("JMVAE_WEIGHTS")
    if env:
        return Path(env)
    return bundled_weights(DEFAULT_WEIGHTS_NAME)


# ----------------------------------------------------------------------------- the training state


def save_train_state(
    path: Path, modules: dict[str, torch.nn.Module], optimizers: dict[str, torch.optim.Optimizer], meta: dict
) -> None:
    """Everything --resume needs, by name: {"model": ..., "discriminator": ...} and their optimizers."""
    tensors, groups = {}, {}
    for name, module in modules.items():
        tensors.update({f"{name}/{k}": v for k, v in module.state_dict().items()})
    for name, optimizer in optimizers.items():
        opt = optimizer.state_dict()
        groups[name] = opt["param_groups"]
        for i, state in opt["state"].items():
            for k, v in state.items():
                tensors[f"{name}/{i}/{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
    meta = {"kind": "train_state", "config": modules["model"].cfg.to_dict(), "param_groups": groups, **meta}
    _write(Path(path), tensors, meta)


def load_train_state(path: Path) -> tuple[dict[str, dict], dict[str, dict], dict]:
    """-> (module state_dicts by name, optimizer state_dicts by name, meta)."""
    tensors, meta = _read(path)
    if meta.get("kind") != "train_state":
        raise WeightsError(f"{path} is not a training state (kind {meta.get('kind')!r})")
    groups = meta["param_groups"]
    modules: dict[str, dict] = {}
    optimizers = {name: {"state": {}, "param_groups": g} for name, g in groups.items()}
    for k, v in tensors.items():
        name, rest = k.split("/", 1)
        if name in optimizers:
            i, field = rest.split("/", 1)
            optimizers[name]["state"].setdefault(int(i), {})[field] = v
        else:
            modules.setdefault(name, {})[rest] = v
    return modules, optimizers, meta
