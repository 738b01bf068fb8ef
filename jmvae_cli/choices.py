"""The names the library accepts for its choices: devices, precisions, models and objectives.

Free of torch, so that the command line can offer them (and `jmvae --help` stay instant) without importing it;
runtime.py and model.py take their lists from here.
"""

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16")
MODELS = ("jmvae", "vae", "cvae", "cmma", "classifier")  # the last four live in baselines.py
OBJECTIVES = ("jmvae-kl", "jmvae-zero")
