"""`python -m watchdog.lab.standin`: run one stand-in in the foreground (see `app.main`)."""

from watchdog.lab.standin.app import main

if __name__ == "__main__":
    main()
