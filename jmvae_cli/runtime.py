"""Device and numeric precision, decided in one place for training and inference.

torch is imported by the functions that use it: the CLI reads DEVICES when it starts, and `jmvae --help` should
not wait for torch."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from jmvae_cli.choices import DEVICES, PRECISIONS
from jmvae_cli.errors import JmvaeError

if TYPE_CHECKING:
    import torch


def pick_device(name: str = "auto") -> torch.device:
    """'auto' takes CUDA, then MPS, then the CPU. A device asked for by name must exist: no silent fallback."""
    import torch

    if name not in DEVICES:
        raise JmvaeError(f"unknown device {name!r}: choose one of {', '.join(DEVICES)}")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise JmvaeError("--device cuda was asked for, but PyTorch sees no CUDA device")
    if name == "mps" and not torch.backends.mps.is_available():
        raise JmvaeError("--device mps was asked for, but PyTorch sees no MPS device")
    return torch.device(name)


def bf16_supported(device: torch.device) -> bool:
    import torch

    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        # Without native bf16 (AVX512-BF16/AMX) the CPU emulates it and autocast runs slower than fp32.
        return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return False


@dataclass
class Precision:
    """Mixed precision for a device. 'auto' means bf16 where the hardware has it; training drops back to fp32 by
    itself if bf16 ever gives a non-finite loss (see train.py)."""

    device: torch.device
    dtype: torch.dtype | None  # None: plain fp32

    @classmethod
    def choose(cls, device: torch.device, name: str = "auto") -> Precision:
        import torch

        if name not in PRECISIONS:
            raise JmvaeError(f"unknown precision {name!r}: choose one of {', '.join(PRECISIONS)}")
        if name == "bf16" and not bf16_supported(device):
            raise JmvaeError(f"bf16 was asked for, but {device.type} here has no bf16 support")
        use_bf16 = name == "bf16" or (name == "auto" and bf16_supported(device))
        return cls(device, torch.bfloat16 if use_bf16 else None)

    @property
    def name(self) -> str:
        return "bf16" if self.dtype is not None else "fp32"

    def autocast(self):
        import torch

        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    @property
    def memory_format(self) -> torch.memory_format:
        import torch

        # channels_last lets oneDNN pick its fast convolution kernels on the CPU; on CUDA it helps tensor cores.
        return torch.channels_last if self.device.type in ("cpu", "cuda") else torch.contiguous_format
