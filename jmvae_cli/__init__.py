"""jmvae: translate between face photos and face attributes with a joint multimodal VAE."""

__version__ = "0.1.0"
