from jmvae_cli.cli import main

main()
