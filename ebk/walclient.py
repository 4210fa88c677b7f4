"""The fast path of `ebk wal-push`: hand the path to the daemon and wait for its ack.

PostgreSQL runs archive_command once per segment; importing ebk's CLI, its
key providers and storage SDKs costs far more than archiving a segment.  This
module uses the standard library only: it finds the daemon's socket from the
config (``wal.socket``, else ``<daemon.state_dir>/wal.sock``), sends
``PUSH <absolute path>`` and exits with the daemon's answer.  The daemon
acknowledges only once the object is durable.  When no daemon listens it
returns None and the caller runs the direct push.

`ebk wal-fetch %f %p` takes the same path: the daemon downloads and
authenticates the file (prefetching the next ones) and sends the verified
bytes; this client, running as PostgreSQL's user, writes them to ``%p``.

Protocol (one request per connection, lines of UTF-8):
    client: "PUSH <absolute path>\\n" with the open file as SCM_RIGHTS
    daemon: "OK archived\\n" | "OK identical\\n" | "ERR <exit code> <message>\\n"
    client: "FETCH <WAL file name>\\n"
    daemon: "OK <size>\\n" <size bytes> | "MISSING\\n" | "ERR <exit code> <message>\\n"
"""

from __future__ import annotations

import os
import socket
import sys
import tomllib
from pathlib import Path

DEFAULT_CONFIG = Path("/etc/ebk/ebk.toml")
DEFAULT_STATE_DIR = "/var/lib/ebk/daemon"
SOCKET_NAME = "wal.sock"
# A push waits at most this long for the daemon's ack; PostgreSQL retries after a failure.
ACK_TIMEOUT = 600.0
# restore_command: above 125 PostgreSQL stops recovery instead of ending it early.
FETCH_FATAL = 126


def socket_path(config_path: str | None, environ: dict[str, str] | os._Environ[str]) -> Path:
    """Where the daemon of this config listens (the same rules as ebk.config)."""
    path = config_path or environ.get("EBK_CONFIG") or ""
    data: dict[str, object] = {}
    if path or DEFAULT_CONFIG.exists():
        with open(path or DEFAULT_CONFIG, "rb") as f:
            data = tomllib.load(f)
    wal = data.get("wal") if isinstance(data.get("wal"), dict) else {}
    daemon = data.get("daemon") if isinstance(data.get("daemon"), dict) else {}
    assert isinstance(wal, dict) and isinstance(daemon, dict)
    explicit = environ.get("EBK_WAL__SOCKET", wal.get("socket", ""))
    if explicit:
        return Path(str(explicit))
    state = environ.get("EBK_DAEMON__STATE_DIR", daemon.get("state_dir", DEFAULT_STATE_DIR))
    return Path(str(state)) / SOCKET_NAME


def push_via_daemon(sock_path: Path, wal_path: Path) -> tuple[int, str] | None:
    """(exit code, message) from the daemon, or None when no daemon listens there.

    The file goes over as an open descriptor (SCM_RIGHTS): the daemon reads
    what this process could open, never a path it would open with its own
    rights.
    """
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            client.connect(str(sock_path))
        except (FileNotFoundError, ConnectionRefusedError, PermissionError):
            return None
        client.settimeout(ACK_TIMEOUT)
        try:
            fd = os.open(wal_path, os.O_RDONLY)
        except OSError as exc:
            return 2, f"cannot open {wal_path}: {exc.strerror}"
        try:
            socket.send_fds(client, [f"PUSH {wal_path}\n".encode()], [fd])
        finally:
            os.close(fd)
        reply = b""
        while not reply.endswith(b"\n"):
            part = client.recv(4096)
            if not part:
                break
            reply += part
    except OSError as exc:
        return 4, f"the daemon's wal-push socket failed: {exc}"
    finally:
        client.close()
    text = reply.decode("utf-8", "replace").strip()
    if text.startswith("OK"):
        return 0, text
    if text.startswith("ERR "):
        code, _, message = text[4:].partition(" ")
        return (int(code) if code.isdigit() and code != "0" else 1), message
    return 4, "the daemon closed the wal-push connection without an answer"


def fetch_via_daemon(sock_path: Path, name: str, dest: Path) -> tuple[int, str] | None:
    """Write the daemon's authenticated copy of ``name`` to ``dest``; None: no daemon."""
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    tmp = dest.with_name(f".{dest.name}.ebk-tmp")
    try:
        try:
            client.connect(str(sock_path))
        except (FileNotFoundError, ConnectionRefusedError, PermissionError):
            return None
        client.settimeout(ACK_TIMEOUT)
        client.sendall(f"FETCH {name}\n".encode())
        reader = client.makefile("rb")
        line = reader.readline(8192).decode("utf-8", "replace").strip()
        if line == "MISSING":
            return 1, ""
        if line.startswith("ERR "):
            code, _, message = line[4:].partition(" ")
            return FETCH_FATAL, f"{message} (ebk class {code})"
        verb, _, size_text = line.partition(" ")
        if verb != "OK" or not size_text.isdigit():
            return FETCH_FATAL, "the daemon answered the fetch with nonsense"
        remaining = int(size_text)
        with open(tmp, "wb") as out:
            while remaining:
                part = reader.read(min(remaining, 1024 * 1024))
                if not part:
                    raise OSError("the daemon closed the connection in the middle of the file")
                out.write(part)
                remaining -= len(part)
        os.replace(tmp, dest)
        return 0, ""
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        return FETCH_FATAL, f"the daemon's socket failed: {exc}"
    finally:
        client.close()


def parse_argv(argv: list[str], command: str = "wal-push") -> tuple[str | None, list[str]] | None:
    """(config path, arguments) of `ebk [--config X] [-v|-q] COMMAND ARGS...`, else None."""
    config: str | None = None
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--config" and i + 1 < len(argv):
            config, i = argv[i + 1], i + 2
        elif arg.startswith("--config="):
            config, i = arg.split("=", 1)[1], i + 1
        elif arg in ("-v", "--verbose", "-q", "--quiet"):
            i += 1
        elif arg == command:
            rest = argv[i + 1 :]
            wanted = 1 if command == "wal-push" else 2
            if len(rest) != wanted or any(a.startswith("-") for a in rest):
                return None
            return config, rest
        else:
            return None
    return None


def try_fast_push(argv: list[str]) -> int | None:
    """The exit code of a push the daemon made, or None to run the full CLI."""
    parsed = parse_argv(argv)
    if parsed is None:
        return None
    config, (wal,) = parsed
    try:
        sock = socket_path(config, os.environ)
    except (OSError, tomllib.TOMLDecodeError):
        return None  # the full CLI explains config errors
    result = push_via_daemon(sock, Path(os.path.abspath(wal)))
    if result is None:
        return None
    code, message = result
    if code:
        sys.stderr.write(f"ebk: error: wal-push {wal}: {message}\n  exit code {code}\n")
    return code


def try_fast_fetch(argv: list[str]) -> int | None:
    """The exit code of a fetch the daemon served, or None to run the full CLI."""
    parsed = parse_argv(argv, "wal-fetch")
    if parsed is None:
        return None
    config, (name, dest) = parsed
    try:
        sock = socket_path(config, os.environ)
    except (OSError, tomllib.TOMLDecodeError):
        return None
    result = fetch_via_daemon(sock, name, Path(dest))
    if result is None:
        return None
    code, message = result
    if code not in (0, 1):
        sys.stderr.write(f"ebk: error: wal-fetch {name}: {message}\n  exit code {code}\n")
    return code
