"""Azure Blob Storage (``azure://container/prefix``), with azure-storage-blob.

Large objects are block blobs: blocks of ``storage.part_size`` are staged
``storage.parts_in_flight`` at a time (bounded memory) and become visible
only with Put Block List.  An aborted upload's uncommitted blocks are
discarded (an empty Put Blob, If-None-Match, then delete); blobs that hold only
uncommitted blocks after a crash are listed by ``list_incomplete``.

The account endpoint is ``storage.azure_account_url`` (or the endpoint in
AZURE_STORAGE_CONNECTION_STRING).  Credentials come from the environment only:
AZURE_STORAGE_CONNECTION_STRING (account key or SAS), else azure-identity's
DefaultAzureCredential (service principal env, workload or managed identity,
Azure CLI).  The SDK's own retries are off; one Retrier handles them.
"""

from __future__ import annotations

import base64
import builtins
import os
from collections.abc import Iterator
from typing import Any, BinaryIO, cast

import structlog
from azure.core import MatchConditions
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.storage.blob import BlobBlock, BlobClient, BlobServiceClient

from ebk.config import StorageConfig
from ebk.errors import (
    BucketNotFound,
    ConfigError,
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

log = structlog.get_logger("ebk.storage.azure")

CONNECTION_ENV = "AZURE_STORAGE_CONNECTION_STRING"
CREDENTIAL_HINT = (
    "ebk takes Azure credentials from the environment only: "
    "AZURE_STORAGE_CONNECTION_STRING, or DefaultAzureCredential (AZURE_CLIENT_ID/"
    "AZURE_TENANT_ID/AZURE_CLIENT_SECRET, workload or managed identity, az login)"
)
PERMISSION_HINT = (
    "grant the identity 'Storage Blob Data Contributor' on the container "
    "(or a SAS with read, add, create, write, delete, list)"
)
CREDENTIAL_CODES = frozenset(
    {
        "AuthenticationFailed",
        "InvalidAuthenticationInfo",
        "NoAuthenticationInformation",
        "InvalidAuthenticationInfoHeader",
    }
)
LOCK_CODES = frozenset(
    {"BlobImmutableDueToPolicy", "BlobImmutableDueToLegalHold", "ContainerImmutableDueToPolicy"}
)


def parse_connection_string(text: str) -> dict[str, str]:
    """``Key=Value;...`` (values may contain '=')."""
    pairs = (part.split("=", 1) for part in text.split(";") if "=" in part)
    return {k.strip().lower(): v.strip() for k, v in pairs}


def _service_client(config: StorageConfig, **kwargs: Any) -> BlobServiceClient:
    connection = os.environ.get(CONNECTION_ENV, "")
    account_url = config.azure_account_url
    if connection and not account_url:
        return BlobServiceClient.from_connection_string(connection, **kwargs)
    if not account_url and os.environ.get("AZURE_STORAGE_ACCOUNT"):
        account_url = f"https://{os.environ['AZURE_STORAGE_ACCOUNT']}.blob.core.windows.net"
    if not account_url:
        raise ConfigError(
            "an azure:// repository needs the storage account's endpoint",
            hint='set storage.azure_account_url = "https://ACCOUNT.blob.core.windows.net" '
            f"or {CONNECTION_ENV} / AZURE_STORAGE_ACCOUNT in the environment",
        )
    credential: Any
    if connection:
        parts = parse_connection_string(connection)
        if "accountkey" in parts:
            credential = {
                "account_name": parts.get("accountname", ""),
                "account_key": parts["accountkey"],
            }
        elif "sharedaccesssignature" in parts:
            credential = parts["sharedaccesssignature"]
        else:
            raise StorageCredentialsError(
                f"{CONNECTION_ENV} has neither AccountKey nor SharedAccessSignature",
                hint=CREDENTIAL_HINT,
            )
    else:
        from azure.identity import DefaultAzureCredential

        credential = DefaultAzureCredential()
    return BlobServiceClient(account_url, credential=credential, **kwargs)


class AzureStorage(PrefixedStore):
    """Objects are block blobs below ``prefix`` in ``container``."""

    def __init__(self, container: str, prefix: str, config: StorageConfig) -> None:
        self.container_name = container
        self._locate("azure", container, prefix, config)
        self.service = _service_client(
            config, retry_total=0, connection_timeout=config.timeout, read_timeout=config.timeout
        )
        self.container = self.service.get_container_client(container)
        self._list_page(self._key_prefix(), None, 1)

    # -- helpers -------------------------------------------------------------

    def scope(self) -> dict[str, Any]:
        scope = self.config.azure_encryption_scope
        return {"encryption_scope": scope} if scope else {}

    def _classify(self, exc: Exception, what: str) -> Failure | None:
        where = f"Azure {what} ({self.url})"
        raw = getattr(exc, "error_code", "") or ""
        code = str(getattr(raw, "value", raw))
        if isinstance(exc, ResourceNotFoundError):
            if code == "ContainerNotFound":
                return Failure(
                    False,
                    BucketNotFound(
                        f"{where}: the container {self.container_name!r} does not exist",
                        hint="create it, or fix repository.url / storage.azure_account_url",
                    ),
                )
            return Failure(False, ObjectNotFound(f"{where}: not found ({code or 404})"))
        if isinstance(exc, ClientAuthenticationError):
            status = exc.status_code or 0
            if code in CREDENTIAL_CODES or status in (0, 401):
                return Failure(
                    False,
                    StorageCredentialsError(
                        f"{where}: the credentials were rejected ({code or status or exc})",
                        hint=CREDENTIAL_HINT,
                    ),
                )
            return Failure(
                False,
                StoragePermissionDenied(
                    f"{where}: permission denied ({code or status})", hint=PERMISSION_HINT
                ),
            )
        if isinstance(exc, HttpResponseError) and exc.status_code:
            status = exc.status_code
            if status in (408, 429) or status >= 500 or code in ("ServerBusy", "OperationTimedOut"):
                return Failure(
                    True, StorageError(f"{where}: {code or status}; the store stayed unavailable")
                )
            if code in LOCK_CODES:
                return Failure(
                    False,
                    ObjectLocked(
                        f"{where}: the blob is under an immutability policy or legal hold",
                        hint="this is the immutability configured on the container",
                    ),
                )
            if status == 403:
                return Failure(
                    False,
                    StoragePermissionDenied(
                        f"{where}: permission denied ({code or status})", hint=PERMISSION_HINT
                    ),
                )
            return Failure(False, StorageError(f"{where}: {code or status}: {exc.reason}"))
        if isinstance(
            exc, ServiceRequestError | ServiceResponseError | ConnectionError | TimeoutError
        ):
            return Failure(True, StorageError(f"{where}: {type(exc).__name__}: {exc}"))
        return None

    def _list_page(
        self, prefix: str, token: str | None, size: int, include: list[str] | None = None
    ) -> tuple[list[Any], str | None]:
        def page() -> tuple[list[Any], str | None]:
            pages = self.container.list_blobs(
                name_starts_with=prefix or None,
                include=include,
                results_per_page=size,
                timeout=int(self.config.timeout),
            ).by_page(continuation_token=token)
            items = list(next(pages))
            return items, pages.continuation_token  # type: ignore[attr-defined]

        return cast(tuple[list[Any], str | None], self._call("list blobs", page))

    def blob(self, key: str) -> BlobClient:
        return self.container.get_blob_client(key)

    # -- Storage -------------------------------------------------------------

    def open_write(self, name: str) -> AzureWriter:
        return AzureWriter(self, self._key(name))

    def open_read(self, name: str) -> BinaryIO:
        blob = self.blob(self._key(name))
        try:
            props = self._call(f"stat {name}", blob.get_blob_properties)
        except ObjectNotFound:
            raise ObjectNotFound(f"object {name} does not exist in {self.url}") from None
        etag = props.etag

        def fetch(start: int, end: int) -> bytes:
            return cast(
                bytes,
                self._call(
                    f"read {name}",
                    lambda: blob.download_blob(
                        offset=start,
                        length=end - start + 1,
                        etag=etag,
                        match_condition=MatchConditions.IfNotModified,
                        max_concurrency=1,
                    ).readall(),
                ),
            )

        reader = RangeReader(
            fetch,
            int(props.size),
            chunk=self.config.part_size,
            ahead=self.config.parts_in_flight,
            name=name,
        )
        return cast(BinaryIO, reader)

    def put_bytes(self, name: str, data: bytes) -> None:
        blob = self.blob(self._key(name))
        self._call(f"write {name}", lambda: blob.upload_blob(data, overwrite=True, **self.scope()))

    def put_if_absent(self, name: str, data: bytes) -> None:
        """Put Blob with ``If-None-Match: *`` (``overwrite=False``): 409 BlobAlreadyExists
        (or 412 ConditionNotMet when two creates race)."""
        blob = self.blob(self._key(name))

        def put() -> None:
            try:
                blob.upload_blob(data, overwrite=False, **self.scope())
            except (ResourceExistsError, ResourceModifiedError) as exc:
                raise self.exists_error(name) from exc

        self._create(name, data, put)

    def get_bytes(self, name: str) -> bytes:
        blob = self.blob(self._key(name))
        try:
            return cast(
                bytes,
                self._call(f"read {name}", lambda: blob.download_blob(max_concurrency=1).readall()),
            )
        except ObjectNotFound:
            raise ObjectNotFound(f"object {name} does not exist in {self.url}") from None

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        token: str | None = None
        while True:
            items, token = self._list_page(self._key_prefix(prefix), token, 1000)
            for item in items:
                yield ObjectInfo(self._name(item.name), int(item.size), item.last_modified)
            if not token:
                return

    def delete(self, name: str) -> None:
        blob = self.blob(self._key(name))
        try:
            self._call(f"delete {name}", lambda: blob.delete_blob(delete_snapshots="include"))
        except ObjectNotFound:
            return
        except ObjectLocked as exc:
            exc.message = (
                f"{self.url}/{name} is under an immutability policy or legal hold; "
                "it cannot be deleted yet"
            )
            raise

    def exists(self, name: str) -> bool:
        blob = self.blob(self._key(name))
        return bool(self._call("stat an object", blob.exists))

    def list_incomplete(self) -> builtins.list[IncompleteUpload]:
        """Blobs that hold only uncommitted blocks (an upload that never committed)."""

        def names(include: list[str] | None) -> dict[str, Any]:
            found: dict[str, Any] = {}
            token: str | None = None
            while True:
                items, token = self._list_page(self._key_prefix(), token, 1000, include)
                found.update((item.name, item) for item in items)
                if not token:
                    return found

        committed = names(None)
        every = names(["uncommittedblobs"])
        return [
            IncompleteUpload(self._name(key), item.creation_time or item.last_modified, key)
            for key, item in sorted(every.items())
            if key not in committed
        ]

    def remove_incomplete(self, upload: IncompleteUpload) -> None:
        self.discard_uncommitted(upload.handle)

    def discard_uncommitted(self, key: str) -> None:
        """An empty Put Block List drops the uncommitted blocks, then the empty blob goes.

        If-None-Match spares a committed blob of the same name (its stray
        blocks then expire by themselves after a week).
        """
        blob = self.blob(key)
        try:
            created = self._call(
                "discard uncommitted blocks",
                lambda: blob.commit_block_list(
                    [], match_condition=MatchConditions.IfMissing, **self.scope()
                ),
            )
        except StorageError as exc:
            if "BlobAlreadyExists" in exc.message or "ConditionNotMet" in exc.message:
                return
            raise
        try:
            self._call(
                "discard uncommitted blocks",
                lambda: blob.delete_blob(
                    etag=created["etag"], match_condition=MatchConditions.IfNotModified
                ),
            )
        except ObjectNotFound:
            return

    def close(self) -> None:
        self.service.close()


class AzureWriter(PipelinedWriter[str]):
    """One object being uploaded: a single Put Blob if it fits one block, else staged blocks."""

    def __init__(self, storage: AzureStorage, key: str) -> None:
        self._s = storage
        self._key = key
        self._blob = storage.blob(key)
        self._finished = False
        size = storage.config.part_size
        self.pipeline: PartPipeline[str] = PartPipeline(
            self._stage,
            part_size=lambda _n: size,
            in_flight=storage.config.parts_in_flight,
            workers=storage.config.parts_in_flight,
            name=key.rsplit("/", 1)[-1],
        )

    def _stage(self, number: int, data: bytearray) -> str:
        block_id = base64.b64encode(f"ebk-block-{number:08d}".encode()).decode()
        self._s._call(
            f"stage block {number}",
            lambda: self._blob.stage_block(
                block_id,
                bytes(data) if not isinstance(data, bytes) else data,
                length=len(data),
                **self._s.scope(),
            ),
        )
        return block_id

    def put_whole(self, data: bytes) -> None:
        self._s._call(
            "write an object",
            lambda: self._blob.upload_blob(data, overwrite=True, **self._s.scope()),
        )

    def complete(self) -> None:
        ids = self.pipeline.finish()
        self._s._call(
            "commit the block list",
            lambda: self._blob.commit_block_list(
                [BlobBlock(block_id=i) for i in ids], **self._s.scope()
            ),
        )

    def abort(self) -> None:
        if self._finished:
            return
        self._finished = True
        self.pipeline.cancel()
        if self.pipeline.submitted:
            try:
                self._s.discard_uncommitted(self._key)
            except StorageError as exc:
                log.warning(
                    "could not discard uncommitted blocks; `ebk repo check --clean` "
                    "removes them later",
                    key=self._key,
                    error=exc.message,
                )
