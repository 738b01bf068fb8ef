"""Tiny models (64x64 unless asked for another size) and test images for the translation tests (import the
fixtures you need from here).

The model is narrow (a few thousand parameters) but has the real 64x64 geometry, so every command runs end to
end in milliseconds. It is untrained: its outputs are arbitrary but deterministic, which is all that the
formulas and the plumbing need.
"""

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from jmvae_cli.checkpoint import save_model
from jmvae_cli.model import JMVAE, JMVAEConfig

ATTRS = ["Smiling", "Male", "Eyeglasses", "Blond_Hair", "Young"]
PREPROCESS = {"size": 64, "celeba_crop": 148 / 178}
SAMPLE_FACES = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "celeba-hq-256-sample"
EXAMPLE_FACE = Path(__file__).resolve().parents[1] / "examples" / "astronaut.png"  # a real face, in the repository


def tiny_model(attr_names=ATTRS, seed: int = 0, objective: str = "jmvae-kl", image_size: int = 64) -> JMVAE:
    torch.manual_seed(seed)
    cfg = JMVAEConfig(
        n_attrs=len(attr_names),
        latent_dim=4,
        image_size=image_size,
        channels=(8,) * ((image_size // 4).bit_length() - 1),  # one stride-2 layer per doubling from 4x4
        image_features=16,
        attr_hidden=16,
        joint_hidden=16,
        objective=objective,
    )
    model = JMVAE(cfg)
    # Larger weights and random BatchNorm statistics: at PyTorch's default initialisation the untrained eval-mode
    # network gives nearly the same output for every input, which would hide mix-ups between images.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(3)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def save_tiny(path: Path, attr_names=ATTRS, seed: int = 0, **meta) -> Path:
    save_model(path, tiny_model(attr_names, seed), {"attr_names": list(attr_names), "preprocess": PREPROCESS, **meta})
    return path


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("weights") / "tiny.safetensors")


@pytest.fixture
def weights_env(tiny_weights, monkeypatch) -> Path:
    """Point the CLI at the tiny model through JMVAE_WEIGHTS."""
    monkeypatch.setenv("JMVAE_WEIGHTS", str(tiny_weights))
    return tiny_weights


def photo_array(w: int = 96, h: int = 80, seed: int = 0) -> np.ndarray:
    """A smooth random colour image, (h, w, 3) uint8: JPEG- and resize-friendly, different in every pixel."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return np.array(Image.fromarray(small, "RGB").resize((w, h), Image.Resampling.BICUBIC))


def write_photo(path: Path, w: int = 96, h: int = 80, seed: int = 0, mode: str = "RGB") -> Path:
    img = Image.fromarray(photo_array(w, h, seed), "RGB")
    if mode != "RGB":
        img = img.convert(mode)
    img.save(path)
    return path


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def sample_face() -> Path:
    """A real face photo (CelebA-HQ sample) for the detector; skips the test where the data set is absent."""
    files = sorted(SAMPLE_FACES.glob("*.jpg")) if SAMPLE_FACES.is_dir() else []
    if not files:
        pytest.skip(f"no sample faces in {SAMPLE_FACES}")
    return files[0]


def face_album(folder: Path, n: int) -> list[str]:
    """n photo files in a new folder: the example face turned a little more in each (up to 27 degrees), and last
    one that is no image."""
    folder.mkdir()
    img = Image.open(EXAMPLE_FACE).convert("RGB")
    files = []
    for k in range(n - 1):
        f = folder / f"{k}.png"
        img.rotate(3 * (k % 10), Image.Resampling.BICUBIC).save(f)
        files.append(str(f))
    (folder / "bad.jpg").write_bytes(b"not a jpeg")
    return files + [str(folder / "bad.jpg")]
