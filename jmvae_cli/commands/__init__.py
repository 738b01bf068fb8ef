"""One module per `jmvae` command; cli.py puts them together."""
