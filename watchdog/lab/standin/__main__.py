"""`python -m watchdog.lab.standin`: run one stand-in in the foreground (see `cli.main`)."""

from watchdog.lab.standin.cli import main

if __name__ == "__main__":
    main()
