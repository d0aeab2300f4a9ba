"""``python -m medp2p.cli``: the ``medp2p`` command (torchrun launches it this way)."""

from medp2p.cli import main

if __name__ == "__main__":
    main()
