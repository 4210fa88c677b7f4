"""The application layer: what ebk does, called the same way by the CLI and the daemon.

Each module is one use case (backup, restore, maintenance, retention).  The
CLI parses arguments and renders what these return; the daemon schedules the
same calls.  Nothing here prints.
"""
