"""Every model of the package, by the name a model file saves as its config's "model": the one list of them.

    build(cfg)          the model cfg.model names, built from cfg (training, and loading a model file)
    names()             the names, in the order of the table below (the CLI's --model choices)
    model_class(name)   the class registered under a name

A new model is a subclass of model.Model (its docstring lists what callers ask of a model) and one line in
MODELS below; training, saving, loading, `jmvae train --model` and the likelihood bounds then find it by its name.
A model from outside the package (a plug-in, a test) is registered the same way: MODELS[name] = its class.

This module loads no torch: the classes are imported on first use, so listing the names costs nothing at
`jmvae --help`.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from jmvae_cli.model import JMVAEConfig, Model

OBJECTIVES = ("jmvae-kl", "jmvae-zero")  # the JMVAE's (model.py): Eq. 2 and Eq. 1 of the paper

# name -> its class, or "module:Class" until first use
MODELS: dict[str, str | type[Model]] = {
    "jmvae": "jmvae_cli.model:JMVAE",
    "vae": "jmvae_cli.baselines:VAE",
    "cvae": "jmvae_cli.baselines:CVAE",
    "cmma": "jmvae_cli.baselines:CMMA",
    "classifier": "jmvae_cli.baselines:AttributeClassifier",
}


def names() -> tuple[str, ...]:
    return tuple(MODELS)


def model_class(name: str) -> type[Model]:
    if name not in MODELS:
        raise ValueError(f"model must be one of {', '.join(MODELS)}, not {name!r}")
    entry = MODELS[name]
    if isinstance(entry, str):
        module, _, attr = entry.partition(":")
        entry = MODELS[name] = getattr(import_module(module), attr)
    return entry


def build(cfg: JMVAEConfig) -> Model:
    """The model that cfg.model names, built from cfg."""
    return model_class(cfg.model)(cfg)
