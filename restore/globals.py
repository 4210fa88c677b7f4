"""Make `pg_dumpall --globals-only` output apply in one transaction, all or nothing.

pg_dumpall writes `CREATE ROLE x;` then `ALTER ROLE x WITH ...;` for every
role and expects the CREATE to fail harmlessly where the role exists (it
always does for the restoring superuser).  ebk runs the script with
ON_ERROR_STOP=1 in a single transaction, so a failure changes no role; for
that the CREATE of a role that already exists is left out (its ALTER ROLE
still sets the attributes), and tablespace statements are left out
(CREATE TABLESPACE cannot run inside a transaction, and a logical restore
does not create directories on the target host).  Lines are only ever
removed, never added or rewritten.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

_CREATE_ROLE = re.compile(rb'CREATE ROLE ("(?:[^"]|"")+"|[a-z_][a-z0-9_$]*);')
_TABLESPACE = re.compile(
    rb"(?:CREATE|ALTER|COMMENT ON|GRANT .* ON|REVOKE .* ON|SECURITY LABEL .* ON) TABLESPACE "
)


def _role_name(ident: bytes) -> str:
    if ident.startswith(b'"'):
        ident = ident[1:-1].replace(b'""', b'"')
    return ident.decode("utf-8", errors="surrogateescape")


class GlobalsFilter:
    """Streams the script through, dropping the lines described above."""

    def __init__(self, existing_roles: Iterable[str]) -> None:
        self._existing = set(existing_roles)
        self.existing_roles_kept: list[str] = []
        self.tablespace_statements = 0

    def _line(self, line: bytes) -> bytes:
        match = _CREATE_ROLE.fullmatch(line)
        if match and _role_name(match.group(1)) in self._existing:
            self.existing_roles_kept.append(_role_name(match.group(1)))
            return b""
        if _TABLESPACE.match(line):
            self.tablespace_statements += 1
            return b""
        return line

    def __call__(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        pending = b""
        for chunk in chunks:
            pending += chunk
            *lines, pending = pending.split(b"\n")
            if lines:
                yield b"".join(self._line(line) + b"\n" for line in lines)
        if pending:
            yield self._line(pending)
