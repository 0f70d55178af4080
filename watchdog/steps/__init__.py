"""The `preparing` phase's steps (DESIGN.md section 12): backup, clone, deploy, migrate, gate.

Each step is I/O, like the sources and the routers, and runs off the tick's path as an asyncio
task that `abort` may cancel. `base.py` has what every step shares (its result, its context),
`command.py` runs an argv command (SIGTERM, then SIGKILL, when cancelled or out of time),
`pg.py` the PostgreSQL server a colour's database lives on.
"""
