"""`python -m mcir_cli` entry point (what torchrun launches)."""

from mcir_cli.cli import main

if __name__ == "__main__":
    main()
