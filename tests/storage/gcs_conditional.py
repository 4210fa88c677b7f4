"""gcp-storage-emulator with ``ifGenerationMatch=0`` honoured (run as a script).

The emulator ignores every GCS precondition, so a create-if-absent write
(``put_if_absent``) would silently overwrite there, while real GCS answers 412.
This wrapper patches the emulator in its own process before it starts: an
upload carrying ``ifGenerationMatch=0`` for a name that exists gets 412
conditionNotMet, checked and stored under one lock so concurrent writers race
as they do on GCS.  Everything else is the unmodified emulator.
"""

from __future__ import annotations

import sys
import threading
from http import HTTPStatus
from typing import Any

from gcp_storage_emulator import exceptions
from gcp_storage_emulator.handlers import objects
from gcp_storage_emulator.storage import Storage

_lock = threading.Lock()
_state = threading.local()
_original_insert = objects.insert
_original_create = Storage.create_file


class Taken(Exception):
    pass


def _create_file(self: Storage, bucket: str, name: str, *args: Any, **kwargs: Any) -> Any:
    with _lock:
        if getattr(_state, "absent_only", False):
            try:
                self.get_file_obj(bucket, name)
            except exceptions.NotFound:
                pass
            else:
                raise Taken(name)
        return _original_create(self, bucket, name, *args, **kwargs)


def _insert(request: Any, response: Any, storage: Any, *args: Any, **kwargs: Any) -> Any:
    _state.absent_only = request.query.get("ifGenerationMatch") == ["0"]
    try:
        return _original_insert(request, response, storage, *args, **kwargs)
    except Taken as taken:
        response.status = HTTPStatus.PRECONDITION_FAILED
        message = f"At least one of the pre-conditions you specified did not hold ({taken})"
        response.json(
            {
                "error": {
                    "code": 412,
                    "message": message,
                    "errors": [{"reason": "conditionNotMet", "message": message}],
                }
            }
        )
        return None
    finally:
        _state.absent_only = False


objects.insert = _insert
Storage.create_file = _create_file  # type: ignore[method-assign]

if __name__ == "__main__":
    from gcp_storage_emulator.__main__ import main

    main(sys.argv[1:])
