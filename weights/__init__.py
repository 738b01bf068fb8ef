"""The bundled default model (installed as jmvae_cli.weights, so a non-editable install finds it)."""
