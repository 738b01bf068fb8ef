"""Where the files shipped with the package lie (weights/: the default model, the face aligner, the classifier).

Apart from checkpoint.py, which imports torch: the face search reads its aligner without it (faces.SearchAhead).
"""

from importlib import resources
from pathlib import Path


def bundled_weights(name: str) -> Path:
    """A file of the models shipped with the package."""
    try:
        folder = resources.files("jmvae_cli.weights")
    except ModuleNotFoundError:  # a source checkout on sys.path, not installed: weights/ sits beside the package
        folder = Path(__file__).resolve().parents[1] / "weights"
    return Path(str(folder.joinpath(name)))
