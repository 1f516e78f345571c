"""`python -m difftrain ...` runs the CLI (what `torchrun -m` and `accelerate launch -m` need)."""

from difftrain.cli.main import main

if __name__ == "__main__":
    main()
