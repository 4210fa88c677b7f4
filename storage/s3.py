"""S3 and S3-compatible storage (``s3://bucket/prefix``), with boto3.

Large objects go up as multipart uploads: parts of ``storage.part_size`` are
uploaded ``storage.parts_in_flight`` at a time, so memory stays bounded; an
object that fits in one part is a single PUT.  S3 allows 10,000 parts, so the
part size doubles every 2,000 parts: with 8 MiB parts memory stays at
~40 MiB up to a 15 GiB object and the largest object is ~480 GiB (raise
``storage.part_size`` for larger single archives).  Nothing is visible under a
name until CompleteMultipartUpload succeeds, and a failed upload is aborted;
uploads orphaned by a crash are listed by ListMultipartUploads
(``list_incomplete``).  botocore's own retries are off: every call goes
through one Retrier, so the policy is the same for every backend.

With ``storage.object_lock_days`` each committed object gets an Object Lock
retention; in a versioned bucket ``delete`` checks it first and raises
ObjectLocked instead of leaving a delete marker that would hide a backup that
still exists (in an unversioned bucket a delete is one DELETE).
"""

from __future__ import annotations

import builtins
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any, BinaryIO, cast

import boto3
import structlog
from botocore.config import Config as BotoConfig
from botocore.exceptions import (
    ClientError,
    ConnectionError,
    CredentialRetrievalError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    PartialCredentialsError,
)

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

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = structlog.get_logger("ebk.storage.s3")

MAX_PARTS = 10_000
MAX_PART = 5 * 1024**3
GROW_EVERY = 2_000  # parts; the part size doubles after each block of this many

TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestTimeout",
        "RequestTimeoutException",
        "InternalError",
        "ServiceUnavailable",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "BandwidthLimitExceeded",
        "PriorRequestNotComplete",
        "OperationAborted",
        "XAmzContentSHA256Mismatch",
        "ConditionalRequestConflict",  # a concurrent conditional write; S3 says retry
    }
)
CREDENTIAL_CODES = frozenset(
    {
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "ExpiredTokenException",
        "InvalidToken",
        "TokenRefreshRequired",
        "InvalidClientTokenId",
        "AuthFailure",
        "UnrecognizedClientException",
        "InvalidSecurity",
    }
)
PERMISSION_CODES = frozenset({"AccessDenied", "AllAccessDisabled", "AccountProblem", "Forbidden"})
CREDENTIAL_HINT = (
    "ebk takes AWS credentials from the SDK chain only (AWS_ACCESS_KEY_ID/"
    "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, web identity, instance role); check "
    "they are current and meant for this endpoint"
)
PERMISSION_HINT = (
    "grant s3:ListBucket, s3:ListBucketMultipartUploads, s3:GetObject, "
    "s3:PutObject, s3:DeleteObject, s3:AbortMultipartUpload (and "
    "s3:PutObjectRetention, s3:GetObjectRetention with object lock; optionally "
    "s3:GetBucketVersioning, which saves a HEAD per delete) on the bucket and prefix"
)


def part_size_for(base: int, number: int) -> int:
    """Part ``number`` (1-based): doubles every GROW_EVERY parts, so 10,000 parts reach ~1 TiB."""
    return min(MAX_PART, base << ((number - 1) // GROW_EVERY))


class S3Storage(PrefixedStore):
    """Objects are keys below ``prefix`` in ``bucket``."""

    def __init__(self, bucket: str, prefix: str, config: StorageConfig) -> None:
        self.bucket = bucket
        self._versioning: bool | None = None
        self._locate("s3", bucket, prefix, config)
        boto_config = BotoConfig(
            region_name=config.region or None,
            s3=cast(Any, {"addressing_style": config.addressing_style}),
            retries={"total_max_attempts": 1, "mode": "standard"},
            connect_timeout=config.timeout,
            read_timeout=config.timeout,
            max_pool_connections=max(10, 2 * config.parts_in_flight + 2),
            tcp_keepalive=True,
        )
        session = boto3.session.Session()
        self.client: S3Client = session.client(
            "s3", endpoint_url=config.endpoint_url or None, config=boto_config
        )
        self._call(
            "open the repository",
            lambda: self.client.list_objects_v2(
                Bucket=bucket, Prefix=self._key_prefix(), MaxKeys=1
            ),
        )
        if config.object_lock_days:
            self._check_lock_enabled()

    # -- helpers -------------------------------------------------------------

    def _classify(self, exc: Exception, what: str) -> Failure | None:
        where = f"S3 {what} ({self.url})"
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            message = str(error.get("Message", "")) or code
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
            detail = f"{where}: {code or status}: {message}"
            if code in TRANSIENT_CODES or status >= 500 or status == 429:
                return Failure(True, StorageError(f"{detail}; the store stayed unavailable"))
            if code in CREDENTIAL_CODES:
                return Failure(
                    False,
                    StorageCredentialsError(
                        f"{where}: the credentials were rejected ({code})", hint=CREDENTIAL_HINT
                    ),
                )
            if code in PERMISSION_CODES or status == 403:
                return Failure(
                    False,
                    StoragePermissionDenied(
                        f"{where}: permission denied ({code or status})", hint=PERMISSION_HINT
                    ),
                )
            if code == "NoSuchBucket":
                return Failure(
                    False,
                    BucketNotFound(
                        f"{where}: the bucket {self.bucket!r} does not exist",
                        hint="create it (with Object Lock if you want immutability), or fix "
                        "repository.url / storage.endpoint_url / storage.region",
                    ),
                )
            if code in ("NoSuchKey", "404", "NotFound"):
                return Failure(False, ObjectNotFound(f"{where}: no such object"))
            return Failure(False, StorageError(detail))
        if isinstance(exc, NoCredentialsError | PartialCredentialsError | CredentialRetrievalError):
            return Failure(
                False,
                StorageCredentialsError(
                    f"{where}: no usable AWS credentials ({exc})", hint=CREDENTIAL_HINT
                ),
            )
        if isinstance(exc, HTTPClientError | ConnectionError | IncompleteReadError):
            return Failure(True, StorageError(f"{where}: {exc}"))
        return None

    def _check_lock_enabled(self) -> None:
        try:
            conf = self._call(
                "read the Object Lock configuration",
                lambda: self.client.get_object_lock_configuration(Bucket=self.bucket),
            )
            enabled = conf.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") == "Enabled"
        except StoragePermissionDenied:
            raise
        except StorageError:
            enabled = False
        if not enabled:
            raise ConfigError(
                f"storage.object_lock_days = {self.config.object_lock_days} but the bucket "
                f"{self.bucket!r} has no Object Lock",
                hint="Object Lock can only be enabled when a bucket is created (or by AWS "
                "support); create a new bucket with it, or set object_lock_days = 0",
            )

    def encryption_args(self) -> dict[str, Any]:
        if not self.config.sse_kms_key_id:
            return {}
        return {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": self.config.sse_kms_key_id}

    def apply_retention(self, key: str) -> None:
        """Put the configured Object Lock retention on a committed object.

        Not on the repository's coordination objects (locks/…: the lease), which
        must be deletable the moment their holder is done; they hold no backup data.
        """
        if not self.config.object_lock_days or f"/{key}".rsplit("/", 2)[-2] == "locks":
            return
        until = datetime.now(UTC) + timedelta(days=self.config.object_lock_days)
        mode = self.config.object_lock_mode.upper()
        self._call(
            "put object retention",
            lambda: self.client.put_object_retention(
                Bucket=self.bucket,
                Key=key,
                Retention=cast(Any, {"Mode": mode, "RetainUntilDate": until}),
            ),
        )

    # -- Storage -------------------------------------------------------------

    def open_write(self, name: str) -> S3Writer:
        return S3Writer(self, self._key(name))

    def open_read(self, name: str) -> BinaryIO:
        key = self._key(name)
        head = self._head(key)
        if head is None:
            raise ObjectNotFound(f"object {name} does not exist in {self.url}")
        etag = str(head["ETag"])

        def fetch(start: int, end: int) -> bytes:
            def get() -> bytes:
                resp = self.client.get_object(
                    Bucket=self.bucket, Key=key, IfMatch=etag, Range=f"bytes={start}-{end}"
                )
                return resp["Body"].read()

            return cast(bytes, self._call(f"read {name}", get))

        reader = RangeReader(
            fetch,
            int(head["ContentLength"]),
            chunk=self.config.part_size,
            ahead=self.config.parts_in_flight,
            name=name,
        )
        return cast(BinaryIO, reader)

    def _head(self, key: str) -> dict[str, Any] | None:
        try:
            return cast(
                dict[str, Any],
                self._call(
                    "stat an object", lambda: self.client.head_object(Bucket=self.bucket, Key=key)
                ),
            )
        except ObjectNotFound:
            return None

    def put_bytes(self, name: str, data: bytes) -> None:
        key = self._key(name)
        self._call(
            f"write {name}",
            lambda: self.client.put_object(
                Bucket=self.bucket, Key=key, Body=data, **self.encryption_args()
            ),
        )
        self.apply_retention(key)

    def put_if_absent(self, name: str, data: bytes) -> None:
        """PutObject with ``If-None-Match: *``: S3 answers 412 if the key exists."""
        key = self._key(name)

        def put() -> None:
            try:
                self.client.put_object(
                    Bucket=self.bucket,
                    Key=key,
                    Body=data,
                    IfNoneMatch="*",
                    **self.encryption_args(),
                )
            except ClientError as exc:
                status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                if (
                    exc.response.get("Error", {}).get("Code") == "PreconditionFailed"
                    or status == 412
                ):
                    raise self.exists_error(name) from exc
                raise

        self._create(name, data, put)
        self.apply_retention(key)

    def get_bytes(self, name: str) -> bytes:
        key = self._key(name)
        try:
            return cast(
                bytes,
                self._call(
                    f"read {name}",
                    lambda: self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read(),
                ),
            )
        except ObjectNotFound:
            raise ObjectNotFound(f"object {name} does not exist in {self.url}") from None

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        token: str | None = None
        while True:
            args: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self._key_prefix(prefix)}
            if token:
                args["ContinuationToken"] = token
            page = self._call("list objects", partial(self.client.list_objects_v2, **args))
            for item in page.get("Contents", []):
                yield ObjectInfo(self._name(item["Key"]), int(item["Size"]), item["LastModified"])
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return

    def _versioned(self) -> bool:
        """Whether a plain DELETE only adds a delete marker (versioning on or suspended;
        Object Lock implies it).  Asked once per process; when the bucket's versioning
        cannot be read, the answer that is right for both kinds (True) is used."""
        if self._versioning is None:
            if self.config.object_lock_days:
                self._versioning = True
            else:
                try:
                    resp = self._call(
                        "read the bucket versioning",
                        lambda: self.client.get_bucket_versioning(Bucket=self.bucket),
                    )
                    self._versioning = resp.get("Status") in ("Enabled", "Suspended")
                except StoragePermissionDenied:
                    self._versioning = True
        return self._versioning

    def delete(self, name: str) -> None:
        """One DELETE in an unversioned bucket (S3 answers 204 for a missing key too).

        In a versioned bucket (every Object Lock bucket is one) a plain DELETE
        never fails: on a locked object it adds a delete marker that hides a
        backup that still exists.  The refusal then cannot come from the
        DELETE, so the object's retention is read first (HEAD) and a locked
        object is refused before anything changes.
        """
        key = self._key(name)
        if self._versioned():
            head = self._head(key)
            if head is None:
                return
            self._refuse_if_locked(name, head)
        try:
            self._call(
                f"delete {name}", lambda: self.client.delete_object(Bucket=self.bucket, Key=key)
            )
        except ObjectNotFound:
            return
        except StoragePermissionDenied as exc:
            if "object lock" in str(exc.__cause__).lower():
                raise ObjectLocked(
                    f"{self.url}/{name} is under Object Lock; it cannot be deleted yet",
                    hint="this is the immutability you configured; delete it after its "
                    "retention ends",
                ) from None
            raise

    def _refuse_if_locked(self, name: str, head: dict[str, Any]) -> None:
        until = head.get("ObjectLockRetainUntilDate")
        if head.get("ObjectLockLegalHoldStatus") == "ON":
            raise ObjectLocked(
                f"{self.url}/{name} is under an Object Lock legal hold",
                hint="remove the legal hold first if the deletion is intended",
            )
        if until is not None and until > datetime.now(UTC):
            raise ObjectLocked(
                f"{self.url}/{name} is under Object Lock retention "
                f"({head.get('ObjectLockMode', '?')}) until {until.isoformat(timespec='seconds')}; "
                "it cannot be deleted before then",
                hint="this is the immutability you configured; delete it after that date",
            )

    def exists(self, name: str) -> bool:
        return self._head(self._key(name)) is not None

    def list_incomplete(self) -> builtins.list[IncompleteUpload]:
        found: builtins.list[IncompleteUpload] = []
        markers: dict[str, str] = {}
        while True:
            args: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self._key_prefix(), **markers}
            page = self._call(
                "list multipart uploads", partial(self.client.list_multipart_uploads, **args)
            )
            for upload in page.get("Uploads", []):
                found.append(
                    IncompleteUpload(
                        self._name(upload["Key"]), upload.get("Initiated"), upload["UploadId"]
                    )
                )
            if not page.get("IsTruncated"):
                return found
            markers = {
                "KeyMarker": page.get("NextKeyMarker", ""),
                "UploadIdMarker": page.get("NextUploadIdMarker", ""),
            }

    def remove_incomplete(self, upload: IncompleteUpload) -> None:
        self.abort_upload(self._key(upload.name), upload.handle)

    def abort_upload(self, key: str, upload_id: str) -> None:
        try:
            self._call(
                "abort a multipart upload",
                lambda: self.client.abort_multipart_upload(
                    Bucket=self.bucket, Key=key, UploadId=upload_id
                ),
            )
        except StorageError as exc:
            if "NoSuchUpload" not in exc.message:
                raise

    def close(self) -> None:
        self.client.close()


class S3Writer(PipelinedWriter[dict[str, Any]]):
    """One object being uploaded: a single PUT if it fits one part, else multipart."""

    def __init__(self, storage: S3Storage, key: str) -> None:
        self._s = storage
        self._key = key
        self._upload_id: str | None = None
        self._lock = threading.Lock()
        self._finished = False
        base = storage.config.part_size
        self.pipeline: PartPipeline[dict[str, Any]] = PartPipeline(
            self._upload_part,
            part_size=lambda n: part_size_for(base, n),
            in_flight=storage.config.parts_in_flight,
            workers=storage.config.parts_in_flight,
            name=key.rsplit("/", 1)[-1],
        )

    def _ensure_upload(self) -> str:
        with self._lock:
            if self._upload_id is None:
                resp = self._s._call(
                    "start a multipart upload",
                    lambda: self._s.client.create_multipart_upload(
                        Bucket=self._s.bucket,
                        Key=self._key,
                        ChecksumAlgorithm="CRC32",
                        **self._s.encryption_args(),
                    ),
                )
                self._upload_id = str(resp["UploadId"])
            return self._upload_id

    def _upload_part(self, number: int, data: bytearray) -> dict[str, Any]:
        if number > MAX_PARTS:
            raise StorageError(
                f"{self._key}: more than {MAX_PARTS} parts", hint="raise storage.part_size"
            )
        upload_id = self._ensure_upload()
        resp = self._s._call(
            f"upload part {number}",
            lambda: self._s.client.upload_part(
                Bucket=self._s.bucket,
                Key=self._key,
                UploadId=upload_id,
                PartNumber=number,
                Body=cast(Any, data),
                ChecksumAlgorithm="CRC32",
            ),
        )
        part: dict[str, Any] = {"PartNumber": number, "ETag": resp["ETag"]}
        if resp.get("ChecksumCRC32"):
            part["ChecksumCRC32"] = resp["ChecksumCRC32"]
        return part

    def put_whole(self, data: bytes) -> None:
        self._s._call(
            "write an object",
            lambda: self._s.client.put_object(
                Bucket=self._s.bucket, Key=self._key, Body=data, **self._s.encryption_args()
            ),
        )
        self._s.apply_retention(self._key)

    def complete(self) -> None:
        parts = self.pipeline.finish()
        upload_id = self._ensure_upload()
        self._s._call(
            "complete a multipart upload",
            lambda: self._s.client.complete_multipart_upload(
                Bucket=self._s.bucket,
                Key=self._key,
                UploadId=upload_id,
                MultipartUpload={"Parts": cast(Any, parts)},
            ),
        )
        self._upload_id = None
        self._s.apply_retention(self._key)

    def abort(self) -> None:
        if self._finished:
            return
        self._finished = True
        self.pipeline.cancel()
        if self._upload_id is not None:
            try:
                self._s.abort_upload(self._key, self._upload_id)
            except StorageError as exc:
                log.warning(
                    "could not abort a multipart upload; `ebk repo check --clean` removes it later",
                    key=self._key,
                    error=exc.message,
                )
