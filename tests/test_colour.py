import torch

from jmvae_cli.colour import lab_to_srgb, srgb_to_lab


def test_known_colours_and_the_way_back():
    rgb = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.5, 0.5, 0.5]])
    x = rgb.T.reshape(3, 1, 5)  # (3, H, W): five pixels in a row
    lab = srgb_to_lab(x).reshape(3, 5).T  # (5, 3)
    # CIELAB (D65) of sRGB white, black, red, blue and mid grey, as colour references give them
    want = torch.tensor(
        [[100.0, 0.0, 0.0], [0.0, 0.0, 0.0], [53.24, 80.09, 67.20], [32.30, 79.19, -107.86], [53.39, 0.0, 0.0]]
    )
    assert torch.allclose(lab, want, atol=0.05)
    batch = torch.rand(2, 3, 8, 8)
    assert torch.allclose(lab_to_srgb(srgb_to_lab(batch)), batch, atol=1e-5)
