"""Who this process is: named in lock holders' descriptions, never used for trust."""

from __future__ import annotations

import getpass
import os
import socket


def process_identity() -> tuple[str, str, int]:
    """(user, host, pid) of this process."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid {os.getuid()}"
    return user, socket.gethostname(), os.getpid()
