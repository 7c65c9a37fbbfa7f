"""``python -m laplace_head``: the stand-alone stage commands (see laplace_head.cli)."""

from laplace_head.cli import main

if __name__ == "__main__":
    main()
