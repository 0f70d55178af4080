"""`python -m watchdog.lab.standin`: run one stand-in in the foreground (see `cli.main`);
`... initdb ...` and `... upgrade ...` are the PostgreSQL mode's commands (see `pgmode`)."""

import sys

from watchdog.lab.standin.cli import main

if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in ("initdb", "upgrade"):
        from watchdog.lab.standin.pgmode import main as pgmain

        sys.exit(pgmain(sys.argv[1:]))
    main()
