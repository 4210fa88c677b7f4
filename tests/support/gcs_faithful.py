"""gcp-storage-emulator answering as GCS does where the contract suite relies on it.

Run as a script; it patches the emulator in its own process before it starts.
The emulator ignores every precondition and returns a listing in one page, so
``put_if_absent`` would silently overwrite and pagination would never be
exercised, while real GCS answers 412 and pages by ``maxResults``:
- an upload carrying ``ifGenerationMatch=0`` for a name that exists gets 412
  conditionNotMet, checked and stored under one lock so concurrent writers
  race as they do on GCS;
- an object listing with ``maxResults`` returns at most that many items, in
  name order, with ``nextPageToken`` (the last name) when more remain.
Everything else is the unmodified emulator, except that ``--in-memory`` no
longer re-serialises all object metadata after every write (quadratic: 1,050
small uploads took 17 s), since nothing reads that snapshot back in memory.
"""

from __future__ import annotations

import json
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
_original_ls = objects.ls


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


def _ls(request: Any, response: Any, storage: Any, *args: Any, **kwargs: Any) -> Any:
    result = _original_ls(request, response, storage, *args, **kwargs)
    size = request.query.get("maxResults")
    if response.status != HTTPStatus.OK or not size:
        return result
    body = json.loads(response._content)
    after = (request.query.get("pageToken") or [""])[0]
    items = sorted(
        (i for i in body.get("items") or [] if i["name"] > after), key=lambda i: i["name"]
    )
    body["items"] = items[: int(size[0])]
    if len(items) > int(size[0]):
        body["nextPageToken"] = body["items"][-1]["name"]
    response.json(body)
    return result


objects.insert = _insert
objects.ls = _ls
Storage.create_file = _create_file  # type: ignore[method-assign]

if "--in-memory" in sys.argv:
    Storage._write_config_to_file = lambda self: None  # type: ignore[method-assign]

if __name__ == "__main__":
    from gcp_storage_emulator.__main__ import main

    main(sys.argv[1:])
