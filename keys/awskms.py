"""AWS KMS: the KEK is a KMS key; ebk calls Encrypt, Decrypt and ReEncrypt with the DEK.

Binding: the backup's context is the KMS EncryptionContext, which KMS
authenticates with the ciphertext (and writes to CloudTrail), so a wrapped key
moved to another backup fails with InvalidCiphertextException.

Slot: provider "awskms", kek_id the key ARN KMS reports, ciphertext the blob.
Decrypt names that ARN (KeyId), as AWS recommends, so an alias re-pointed to
another key still opens old backups.  Credentials come from the AWS chain
(environment, profile, instance or pod role), never from the ebk config.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

import boto3
import botocore.config
import botocore.exceptions

from ebk.config import AwsKmsConfig
from ebk.errors import (
    ConfigError,
    KeyAccessDenied,
    KeyProviderError,
    KeyProviderUnavailable,
    WrongKey,
)
from ebk.keys.base import WrappedKey
from ebk.keys.lifecycle import KekInfo, KekVersion

if TYPE_CHECKING:
    from mypy_boto3_kms import KMSClient

T = TypeVar("T")

_DENIED = {
    "AccessDeniedException",
    "UnrecognizedClientException",
    "InvalidSignatureException",
    "ExpiredTokenException",
    "ExpiredToken",
    "InvalidClientTokenId",
    "IncompleteSignature",
    "InvalidGrantTokenException",
}
_DISABLED = {
    "DisabledException",
    "KMSInvalidStateException",
    "InvalidKeyUsageException",
    "KeyUnavailableException",
}
_NOT_FOUND = {"NotFoundException", "InvalidArnException"}
_WRONG = {"InvalidCiphertextException", "IncorrectKeyException"}
_TRANSIENT = {
    "KMSInternalException",
    "DependencyTimeoutException",
    "ThrottlingException",
    "LimitExceededException",
    "ServiceUnavailable",
    "InternalFailure",
}


class AwsKmsProvider:
    """One KMS key wraps the DEKs; one KMS request per wrap, unwrap or rewrap."""

    name = "awskms"

    def __init__(self, cfg: AwsKmsConfig) -> None:
        if not cfg.key_id:
            raise ConfigError(
                "keys.provider = 'awskms' but awskms.key_id is empty",
                hint="set it to a key id, alias/NAME or key ARN",
            )
        self.cfg = cfg
        self._client: KMSClient | None = None
        self._allowed_arns: set[str] | None = None

    def _kms(self) -> KMSClient:
        if self._client is None:
            cfg = self.cfg
            session = boto3.session.Session(
                profile_name=cfg.profile or None, region_name=cfg.region or None
            )
            config = botocore.config.Config(
                connect_timeout=cfg.timeout,
                read_timeout=cfg.timeout,
                retries={"max_attempts": cfg.retries + 1, "mode": "standard"},
            )
            try:
                self._client = session.client(
                    "kms", endpoint_url=cfg.endpoint_url or None, config=config
                )
            except botocore.exceptions.NoRegionError:
                raise ConfigError(
                    "AWS KMS needs a region", hint="set awskms.region or AWS_REGION"
                ) from None
            except botocore.exceptions.ProfileNotFound:
                raise ConfigError(f"awskms.profile = {cfg.profile!r} does not exist") from None
        return self._client

    def _call(self, what: str, op: Callable[[KMSClient], T]) -> T:
        where = f"KMS key {self.cfg.key_id}"
        try:
            return op(self._kms())
        except botocore.exceptions.ClientError as exc:
            raise map_client_error(exc, what, where) from None
        except (
            botocore.exceptions.NoCredentialsError,
            botocore.exceptions.PartialCredentialsError,
        ):
            raise KeyAccessDenied(
                f"no AWS credentials to {what} with {where}",
                hint="provide them through the AWS chain: environment, profile, instance or "
                "pod role; never in the ebk config",
            ) from None
        except (botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError) as exc:
            raise KeyProviderUnavailable(
                f"AWS KMS is unreachable ({type(exc).__name__}) after "
                f"{self.cfg.retries + 1} attempt(s): cannot {what}",
                hint="check awskms.region / awskms.endpoint_url and the network; a restore can "
                "use --recovery-key meanwhile",
            ) from None

    def wrap(self, dek: bytes, context: Mapping[str, str]) -> WrappedKey:
        resp = self._call(
            "wrap a data key",
            lambda k: k.encrypt(
                KeyId=self.cfg.key_id, Plaintext=dek, EncryptionContext=dict(context)
            ),
        )
        return WrappedKey(self.name, resp["KeyId"], resp["CiphertextBlob"])

    def _allowed(self) -> set[str]:
        """ARNs of the configured keys (key_id and previous_key_ids), resolved once."""
        if self._allowed_arns is None:
            arns = set()
            for key in [self.cfg.key_id, *self.cfg.previous_key_ids]:
                if key.startswith("arn:") and ":key/" in key:
                    arns.add(key)
                    continue
                arns.add(self._arn_of(key))
            self._allowed_arns = arns
        return self._allowed_arns

    def _refuse_unless_allowed(self, wrapped: WrappedKey) -> None:
        """The slot is unauthenticated: it must not choose the KMS key (a key in another
        account that trusts this role would return, or re-encrypt, whatever data key its
        owner chose)."""
        if wrapped.kek_id not in self._allowed():
            raise WrongKey(
                f"a key slot names KMS key {wrapped.kek_id}, which the configuration does not "
                "allow (awskms.key_id, awskms.previous_key_ids); refusing to ask it",
                hint="if that key really wrapped your backups, add it to awskms.previous_key_ids",
            )

    def _arn_of(self, key: str) -> str:
        meta = self._call("look up a configured key", lambda k: k.describe_key(KeyId=key))
        return str(meta["KeyMetadata"]["Arn"])

    def unwrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> bytes:
        self._refuse_unless_allowed(wrapped)
        resp = self._call(
            f"unwrap a data key wrapped under {wrapped.kek_id}",
            lambda k: k.decrypt(
                CiphertextBlob=wrapped.ciphertext,
                KeyId=wrapped.kek_id,
                EncryptionContext=dict(context),
            ),
        )
        return bytes(resp["Plaintext"])

    def rewrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> WrappedKey:
        """ReEncrypt inside KMS onto the configured key; the DEK is not returned to ebk."""
        self._refuse_unless_allowed(wrapped)
        resp = self._call(
            "rewrap a data key",
            lambda k: k.re_encrypt(
                CiphertextBlob=wrapped.ciphertext,
                SourceKeyId=wrapped.kek_id,
                SourceEncryptionContext=dict(context),
                DestinationKeyId=self.cfg.key_id,
                DestinationEncryptionContext=dict(context),
            ),
        )
        return WrappedKey(self.name, resp["KeyId"], resp["CiphertextBlob"])

    def owns(self, wrapped: WrappedKey) -> bool:
        return wrapped.provider == self.name

    # --- lifecycle (ebk/keys/lifecycle.py) ---------------------------------
    # Versions are KMS keys (awskms.previous_key_ids, then awskms.key_id).  A rotation
    # inside one key (automatic, RotateKeyOnDemand) keeps its ARN, which is all a slot
    # records: after one, a rewrap re-encrypts every slot (rewrap_needs_force).

    rewrap_needs_force = True

    def kek_info(self) -> KekInfo:
        versions = []
        material: datetime | None = None
        notes: list[str] = []
        keys = [*self.cfg.previous_key_ids, self.cfg.key_id]
        for i, key in enumerate(keys):
            meta = self._describe(key)
            m = meta["KeyMetadata"]
            current = i == len(keys) - 1
            versions.append(
                KekVersion(
                    str(m["Arn"]),
                    m.get("CreationDate"),
                    usable=m.get("KeyState") == "Enabled",
                    current=current,
                )
            )
            if current:
                try:
                    rot = self._rotations(key)
                    dates = [r["RotationDate"] for r in rot.get("Rotations", [])]
                    if dates:
                        material = max(dates)
                except KeyProviderError as exc:
                    notes.append(f"rotation history unavailable ({exc.message})")
                try:
                    status = self._rotation_status(key)
                    days = status.get("RotationPeriodInDays")
                    notes.append(
                        f"automatic rotation {'on' if status.get('KeyRotationEnabled') else 'off'}"
                        + (f" every {days} days" if days else "")
                    )
                except KeyProviderError as exc:
                    notes.append(f"rotation status unavailable ({exc.message})")
        return KekInfo(self.name, self.cfg.key_id, versions, material, notes)

    def _describe(self, key: str) -> Any:
        return self._call("describe a key", lambda k: k.describe_key(KeyId=key))

    def _rotations(self, key: str) -> Any:
        return self._call("list key rotations", lambda k: k.list_key_rotations(KeyId=key))

    def _rotation_status(self, key: str) -> Any:
        return self._call(
            "read the rotation status", lambda k: k.get_key_rotation_status(KeyId=key)
        )

    def rotate_kek(self) -> str:
        """RotateKeyOnDemand: new key material behind the same ARN (old material stays)."""
        self._call(
            "rotate the key on demand",
            lambda k: k.rotate_key_on_demand(KeyId=self.cfg.key_id),
        )
        return self._arn_of(self.cfg.key_id)

    def version_of(self, slot: WrappedKey) -> str:
        return slot.kek_id

    def retire_versions(self, kek_ids: list[str], *, apply: bool) -> list[str]:
        """Never deletes a KMS key: it says what to schedule, and how to undo it."""
        del apply
        return [
            f"no backup depends on KMS key {k}: remove it from awskms.previous_key_ids, then "
            f"schedule its deletion yourself (`aws kms schedule-key-deletion --key-id {k} "
            "--pending-window-in-days 30`; cancel-key-deletion undoes it within the window); "
            "ebk does not delete keys"
            for k in kek_ids
        ]

    def describe(self) -> dict[str, str]:
        out = {"provider": self.name, "key": self.cfg.key_id}
        if self.cfg.region:
            out["region"] = self.cfg.region
        if self.cfg.endpoint_url:
            out["endpoint_url"] = self.cfg.endpoint_url
        return out


def map_client_error(
    exc: botocore.exceptions.ClientError, what: str, where: str
) -> KeyProviderError:
    """KMS error codes to the seam's errors; AWS messages carry no secrets."""
    err: Any = exc.response.get("Error", {})
    code = str(err.get("Code", ""))
    message = str(err.get("Message", ""))[:300]
    detail = f"{code}: {message}" if message else code
    if code in _WRONG:
        return WrongKey(
            f"AWS KMS could not {what} with {where} ({code}): the wrapped key was made by "
            "another key, modified, or belongs to another backup",
            hint="the key object must come from the same backup as its data",
        )
    if code in _DENIED:
        return KeyAccessDenied(
            f"AWS KMS denied {what} with {where} ({detail})",
            hint="the key policy / IAM policy must allow kms:Encrypt, kms:Decrypt and "
            "kms:ReEncrypt* for this principal (see docs/key-management.md)",
        )
    if code in _DISABLED:
        return KeyAccessDenied(
            f"{where} is disabled, pending deletion or unusable: cannot {what} ({detail})",
            hint="enable the key (aws kms enable-key) or cancel its deletion; a restore can "
            "use --recovery-key meanwhile",
        )
    if code in _NOT_FOUND:
        return KeyAccessDenied(
            f"{where} does not exist ({detail})", hint="check awskms.key_id and awskms.region"
        )
    if code in _TRANSIENT:
        return KeyProviderUnavailable(f"AWS KMS is unavailable: cannot {what} ({detail})")
    return KeyProviderError(f"AWS KMS rejected the request to {what} with {where} ({detail})")
