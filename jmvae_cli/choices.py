"""The names the library accepts for where and how it runs: devices and precisions (models and objectives are
registry.py's).

Free of torch, so that the command line can offer them (and `jmvae --help` stay instant) without importing it;
runtime.py takes its lists from here.
"""

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16")
