from jmvae_cli.cli import main

if __name__ == "__main__":  # decoding workers are spawned, and they re-import the main module
    main()
