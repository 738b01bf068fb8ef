"""sRGB <-> CIELAB (D65), in torch, for pasting colour changes (editing.change): lightness and colour apart, in a
space where a distance is about what the eye sees. Images are (..., 3, H, W) floats, sRGB in [0, 1]; L in 0..100,
a and b about -128..127, as OpenCV's float conversion gives them."""

import torch

# sRGB's primaries to CIE XYZ under D65, each row divided by the white point's own X, Y, Z
_RGB_TO_XYZ = torch.tensor(
    [
        [0.412453 / 0.950456, 0.357580 / 0.950456, 0.180423 / 0.950456],
        [0.212671, 0.715160, 0.072169],
        [0.019334 / 1.088754, 0.119193 / 1.088754, 0.950227 / 1.088754],
    ]
)
_XYZ_TO_RGB = torch.linalg.inv(_RGB_TO_XYZ)
_EPS = 216 / 24389  # where CIE's f(t) turns from a cube root into a line
_KAPPA = 24389 / 27


def _mix(m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(3, 3) matrix applied to the channel axis of (..., 3, H, W)."""
    return torch.einsum("ij,...jhw->...ihw", m.to(x), x)


def srgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    rgb = rgb.clamp(0, 1)
    linear = torch.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    t = _mix(_RGB_TO_XYZ, linear)  # (..., 3, H, W): X, Y, Z over the white point's
    f = torch.where(t > _EPS, t.clamp(min=_EPS) ** (1 / 3), (_KAPPA * t + 16) / 116)
    fx, fy, fz = f.unbind(-3)
    return torch.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], -3)


def lab_to_srgb(lab: torch.Tensor) -> torch.Tensor:
    """Colours outside sRGB's gamut come back outside [0, 1]: the caller clips."""
    L, a, b = lab.unbind(-3)
    fy = (L + 16) / 116
    f = torch.stack([fy + a / 500, fy, fy - b / 200], -3)  # (..., 3, H, W)
    t = torch.where(f**3 > _EPS, f**3, (116 * f - 16) / _KAPPA)
    linear = _mix(_XYZ_TO_RGB, t)
    return torch.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear.clamp(min=0.0031308) ** (1 / 2.4) - 0.055)
