"""``python -m medp2p``: the same CLI as the ``medp2p`` command."""

from medp2p.cli import main

if __name__ == "__main__":
    main()
