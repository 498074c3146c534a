"""``python -m runner`` is the same as the ``sandrun`` console script."""

from runner.cli import main

if __name__ == "__main__":
    main()
