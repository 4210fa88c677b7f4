"""Google Cloud Storage (``gs://bucket/prefix``), with google-cloud-storage.

Large objects go up through one resumable upload session: chunks of
``storage.part_size`` are sent in order by a background thread while the next
chunks fill (up to ``storage.parts_in_flight`` queued), so memory stays
bounded.  The object appears only when the final chunk is accepted.  A failed
chunk is retried from the offset the server confirms it holds; a failed
upload's session is cancelled.

GCS has no API that lists open resumable sessions: an interrupted session
leaves nothing visible and expires after a week, so ``list_incomplete`` is
empty by design.  Credentials come from Application Default Credentials
(GOOGLE_APPLICATION_CREDENTIALS, workload identity, metadata server);
STORAGE_EMULATOR_HOST points the SDK at an emulator.
"""

from __future__ import annotations

import builtins
import threading
from collections.abc import Iterator
from typing import Any, BinaryIO, cast

import google.auth.exceptions as gauth_exc
import requests
import structlog
from google.api_core import exceptions as gexc
from google.cloud import storage as gcs

from ebk.config import StorageConfig
from ebk.errors import (
    BucketNotFound,
    ObjectLocked,
    ObjectNotFound,
    StorageCredentialsError,
    StorageError,
    StoragePermissionDenied,
)
from ebk.storage.base import IncompleteUpload, ObjectInfo
from ebk.storage.objectstore import PrefixedStore
from ebk.storage.retry import Failure
from ebk.storage.transfer import PartPipeline, PipelinedWriter, RangeReader

log = structlog.get_logger("ebk.storage.gcs")

CREDENTIAL_HINT = (
    "ebk takes Google credentials from Application Default Credentials only "
    "(GOOGLE_APPLICATION_CREDENTIALS, workload identity, the metadata server)"
)
PERMISSION_HINT = (
    "grant roles/storage.objectAdmin (storage.objects.create/get/list/delete) "
    "on the bucket to the service account"
)


class HttpStatus(Exception):
    """A non-success answer from a resumable session URL."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"HTTP {status}: {text[:200]}")
        self.status = status


class GcsStorage(PrefixedStore):
    """Objects are blobs below ``prefix`` in ``bucket``."""

    def __init__(self, bucket: str, prefix: str, config: StorageConfig) -> None:
        self.bucket_name = bucket
        self._locate("gs", bucket, prefix, config)
        options = {"api_endpoint": config.endpoint_url} if config.endpoint_url else None
        try:
            self.client = gcs.Client(client_options=options)
        except gauth_exc.DefaultCredentialsError as exc:
            raise StorageCredentialsError(
                f"no Google credentials for {self.url}: {exc}", hint=CREDENTIAL_HINT
            ) from None
        self.bucket = self.client.bucket(bucket)
        try:
            self._list_page(self._key_prefix(), None, 1)
        except ObjectNotFound:
            raise BucketNotFound(
                f"GCS bucket {bucket!r} does not exist ({self.url})",
                hint="create it, or fix repository.url / storage.endpoint_url",
            ) from None

    # -- helpers -------------------------------------------------------------

    def _classify(self, exc: Exception, what: str) -> Failure | None:
        where = f"GCS {what} ({self.url})"
        status: int | None = None
        if isinstance(exc, gexc.GoogleAPICallError):
            status = int(exc.code or 0)
        elif isinstance(exc, HttpStatus):
            status = exc.status
        elif hasattr(exc, "response") and hasattr(exc.response, "status_code"):
            status = int(exc.response.status_code)  # google.resumable_media InvalidResponse
        if status is not None:
            if status in (408, 429) or status >= 500:
                return Failure(True, StorageError(f"{where}: {exc}; the store stayed unavailable"))
            if status == 401:
                return Failure(
                    False,
                    StorageCredentialsError(
                        f"{where}: the credentials were rejected", hint=CREDENTIAL_HINT
                    ),
                )
            if status == 403:
                return Failure(
                    False,
                    StoragePermissionDenied(
                        f"{where}: permission denied: {exc}", hint=PERMISSION_HINT
                    ),
                )
            if status == 404:
                return Failure(False, ObjectNotFound(f"{where}: not found"))
            if status == 410:
                return Failure(
                    False,
                    StorageError(f"{where}: the resumable upload session expired or was cancelled"),
                )
            return Failure(False, StorageError(f"{where}: {exc}"))
        if isinstance(exc, gauth_exc.RefreshError | gauth_exc.DefaultCredentialsError):
            return Failure(
                False,
                StorageCredentialsError(
                    f"{where}: no usable credentials ({exc})", hint=CREDENTIAL_HINT
                ),
            )
        if isinstance(
            exc,
            requests.ConnectionError
            | requests.Timeout
            | requests.exceptions.ChunkedEncodingError
            | gauth_exc.TransportError
            | ConnectionError
            | TimeoutError,
        ):
            return Failure(True, StorageError(f"{where}: {exc}"))
        return None

    def _list_page(self, prefix: str, token: str | None, size: int) -> tuple[list[Any], str | None]:
        def page() -> tuple[list[Any], str | None]:
            it = self.client.list_blobs(
                self.bucket,
                prefix=prefix,
                page_token=token,
                page_size=size,
                max_results=None if size > 1 else 1,
                retry=None,
                timeout=self.config.timeout,
            )
            items = list(next(it.pages))
            return items, it.next_page_token

        return cast(tuple[list[Any], str | None], self._call("list objects", page))

    def blob(self, key: str) -> gcs.Blob:
        return self.bucket.blob(key, kms_key_name=self.config.gcs_kms_key_name or None)

    # -- Storage -------------------------------------------------------------

    def open_write(self, name: str) -> GcsWriter:
        return GcsWriter(self, self._key(name))

    def open_read(self, name: str) -> BinaryIO:
        key = self._key(name)
        blob = self._call(
            f"stat {name}",
            lambda: self.bucket.get_blob(key, retry=None, timeout=self.config.timeout),
        )
        if blob is None:
            raise ObjectNotFound(f"object {name} does not exist in {self.url}")
        generation = blob.generation

        def fetch(start: int, end: int) -> bytes:
            return cast(
                bytes,
                self._call(
                    f"read {name}",
                    lambda: self.bucket.blob(key).download_as_bytes(
                        start=start,
                        end=end,
                        if_generation_match=generation,
                        checksum=None,
                        retry=None,
                        timeout=self.config.timeout,
                    ),
                ),
            )

        reader = RangeReader(
            fetch,
            int(blob.size or 0),
            chunk=self.config.part_size,
            ahead=self.config.parts_in_flight,
            name=name,
        )
        return cast(BinaryIO, reader)

    def put_bytes(self, name: str, data: bytes) -> None:
        blob = self.blob(self._key(name))
        self._call(
            f"write {name}",
            lambda: blob.upload_from_string(
                data,
                content_type="application/octet-stream",
                retry=None,
                timeout=self.config.timeout,
            ),
        )

    def put_if_absent(self, name: str, data: bytes) -> None:
        """An upload with ``ifGenerationMatch=0``: GCS answers 412 if the object exists.

        (gcp-storage-emulator ignores preconditions; the tests run it through
        tests/storage/gcs_conditional.py, which makes it answer as GCS does.)
        """
        blob = self.blob(self._key(name))

        def put() -> None:
            try:
                blob.upload_from_string(
                    data,
                    content_type="application/octet-stream",
                    if_generation_match=0,
                    retry=None,
                    timeout=self.config.timeout,
                )
            except gexc.PreconditionFailed as exc:
                raise self.exists_error(name) from exc

        self._create(name, data, put)

    def get_bytes(self, name: str) -> bytes:
        blob = self.bucket.blob(self._key(name))
        try:
            return cast(
                bytes,
                self._call(
                    f"read {name}",
                    lambda: blob.download_as_bytes(retry=None, timeout=self.config.timeout),
                ),
            )
        except ObjectNotFound:
            raise ObjectNotFound(f"object {name} does not exist in {self.url}") from None

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        token: str | None = None
        while True:
            items, token = self._list_page(self._key_prefix(prefix), token, 1000)
            for blob in items:
                yield ObjectInfo(self._name(blob.name), int(blob.size or 0), blob.updated)
            if not token:
                return

    def delete(self, name: str) -> None:
        blob = self.bucket.blob(self._key(name))
        try:
            self._call(
                f"delete {name}", lambda: blob.delete(retry=None, timeout=self.config.timeout)
            )
        except ObjectNotFound:
            return
        except StoragePermissionDenied as exc:
            text = exc.message.lower()
            if "retention" in text or "hold" in text:
                raise ObjectLocked(
                    f"{self.url}/{name} is under a bucket retention policy or object hold; "
                    "it cannot be deleted yet",
                    hint="this is the immutability configured on the bucket",
                ) from None
            raise

    def exists(self, name: str) -> bool:
        blob = self.bucket.blob(self._key(name))
        return bool(
            self._call(
                "stat an object", lambda: blob.exists(retry=None, timeout=self.config.timeout)
            )
        )

    def list_incomplete(self) -> builtins.list[IncompleteUpload]:
        """Always empty: GCS cannot list resumable sessions (they expire after a week)."""
        return []

    def remove_incomplete(self, upload: IncompleteUpload) -> None:
        cancel_session(upload.handle, self.config.timeout)

    def close(self) -> None:
        self.client.close()


class ViewReader:
    """A file-like body over a memoryview, so requests streams it without a copy."""

    def __init__(self, view: memoryview) -> None:
        self._view = view
        self._pos = 0

    def __len__(self) -> int:
        return len(self._view) - self._pos

    def read(self, size: int = -1) -> bytes:
        end = len(self._view) if size < 0 else min(len(self._view), self._pos + size)
        out = self._view[self._pos : end].tobytes()
        self._pos = end
        return out


def cancel_session(url: str, timeout: float) -> None:
    """Best effort: GCS answers 499 to a cancelled session; emulators may not support it."""
    try:
        with requests.Session() as http:
            http.delete(url, timeout=timeout)
    except requests.RequestException as exc:
        log.info("could not cancel a resumable upload session", error=str(exc))


class GcsWriter(PipelinedWriter[None]):
    """One object being uploaded: a single request if it fits one chunk, else resumable."""

    def __init__(self, storage: GcsStorage, key: str) -> None:
        self._s = storage
        self._key = key
        self._session_url: str | None = None
        self._http = requests.Session()
        self._offset = 0  # bytes the server has confirmed
        self._lock = threading.Lock()
        self._finished = False
        size = storage.config.part_size
        self.pipeline: PartPipeline[None] = PartPipeline(
            lambda _n, data: self._send(data, final=False),
            part_size=lambda _n: size,
            in_flight=storage.config.parts_in_flight,
            workers=1,  # a resumable session takes chunks in order
            name=key.rsplit("/", 1)[-1],
        )

    def _session(self) -> str:
        with self._lock:
            if self._session_url is None:
                blob = self._s.blob(self._key)
                self._session_url = str(
                    self._s._call(
                        "start a resumable upload",
                        lambda: blob.create_resumable_upload_session(
                            content_type="application/octet-stream",
                            retry=None,
                            timeout=self._s.config.timeout,
                        ),
                    )
                )
            return self._session_url

    def _persisted(self, url: str) -> int | None:
        """Ask the session how much it holds; None once the object is finalized."""
        resp = self._http.put(
            url,
            headers={"Content-Range": "bytes */*", "Content-Length": "0"},
            timeout=self._s.config.timeout,
        )
        if resp.status_code in (200, 201):
            return None
        if resp.status_code != 308:
            raise HttpStatus(resp.status_code, resp.text)
        got = resp.headers.get("Range")
        return int(got.rsplit("-", 1)[1]) + 1 if got else 0

    def _send(self, data: bytearray, *, final: bool) -> None:
        url = self._session()
        start = self._offset
        end = start + len(data)  # exclusive
        retrying = False
        view = memoryview(data)

        def attempt() -> None:
            nonlocal retrying
            sent_from = start
            if retrying:
                held = self._persisted(url)
                if held is None:
                    return  # the final chunk had arrived; the object exists
                if not start <= held <= end:
                    raise StorageError(
                        f"GCS upload of {self._key}: the session holds {held} bytes, expected "
                        f"{start}..{end}; the upload cannot continue"
                    )
                sent_from = held
            retrying = True
            total = str(end) if final else "*"
            if sent_from == end:
                if not final:
                    return
                content_range = f"bytes */{end}"
            else:
                content_range = f"bytes {sent_from}-{end - 1}/{total}"
            resp = self._http.put(
                url,
                data=ViewReader(view[sent_from - start :]),
                headers={"Content-Range": content_range},
                timeout=self._s.config.timeout,
            )
            if final and resp.status_code in (200, 201):
                return
            if not final and resp.status_code == 308:
                got = resp.headers.get("Range")
                held = int(got.rsplit("-", 1)[1]) + 1 if got else 0
                if held != end:
                    raise HttpStatus(503, f"session confirmed {held} of {end} bytes")
                return
            raise HttpStatus(resp.status_code, resp.text)

        self._s._call(f"upload {self._key} at byte {start}", attempt)
        self._offset = end

    def put_whole(self, data: bytes) -> None:
        blob = self._s.blob(self._key)
        self._s._call(
            "write an object",
            lambda: blob.upload_from_string(
                data,
                content_type="application/octet-stream",
                retry=None,
                timeout=self._s.config.timeout,
            ),
        )

    def complete(self) -> None:
        self.pipeline.finish(send_last=False)
        self._send(self.pipeline.take_pending(), final=True)

    def after_commit(self) -> None:
        super().after_commit()
        self._http.close()

    def abort(self) -> None:
        if self._finished:
            return
        self._finished = True
        self.pipeline.cancel()
        if self._session_url is not None:
            cancel_session(self._session_url, self._s.config.timeout)
        self._http.close()
