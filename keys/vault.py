"""Vault / OpenBao Transit: the KEK stays in Vault; ebk asks it to encrypt and decrypt DEKs.

Binding: the Transit key must be created with ``derived=true``; every request
passes the backup's canonical context as Transit ``context``, so Vault
derives a per-backup key from it.  Chosen over ``associated_data`` because a
derived key *refuses* any request without a context (enforced by the server,
not by ebk's diligence), works on every Vault and OpenBao version, and
``rewrap`` accepts ``context`` (it has no ``associated_data``), so rotation
never moves the DEK out of Vault.  A non-derived key silently ignores
``context``; `ebk keys check` catches that by proving a different context
fails.

Slot: provider "vault", kek_id "<mount>/<key>:v<version>", ciphertext the
ASCII "vault:vN:..." string Transit returns.  One request per wrap, unwrap or
rewrap (plus one login for AppRole/Kubernetes auth), whatever the backup size.
"""

from __future__ import annotations

import base64
import os
import re
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar, cast

import hvac
import hvac.exceptions
import requests

from ebk.config import VaultConfig
from ebk.errors import (
    ConfigError,
    KeyAccessDenied,
    KeyProviderError,
    KeyProviderUnavailable,
    WrongKey,
)
from ebk.keys.base import WrappedKey, canonical_context
from ebk.keys.lifecycle import KekInfo, KekVersion
from ebk.privatefile import read_private_file

T = TypeVar("T")
_VERSION = re.compile(r"^vault:v(\d+):")
_BACKOFF = 0.25


def read_secret_file(path: Path, what: str) -> str:
    """A token or secret-id file: private to its owner (ebk/privatefile.py), not empty."""
    _, raw = read_private_file(
        path,
        f"{what} file",
        KeyProviderError,
        missing_hint="create it (mode 0600; Kubernetes secret volumes: defaultMode: 0400)",
    )
    try:
        value = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise KeyProviderError(f"{what} file {path} is not UTF-8 text") from None
    if not value:
        raise KeyProviderError(f"{what} file {path} is empty")
    return value


class VaultTransitProvider:
    """Wrap/unwrap/rewrap through one Transit key; errors tell unreachable, sealed, denied."""

    name = "vault"

    def __init__(self, cfg: VaultConfig, environ: Mapping[str, str] | None = None) -> None:
        self.cfg = cfg
        self._env = os.environ if environ is None else environ
        self.address = (cfg.address or self._env.get("VAULT_ADDR", "")).rstrip("/")
        if not self.address:
            raise ConfigError(
                "keys.provider = 'vault' but vault.address is empty",
                hint="set vault.address (or VAULT_ADDR), e.g. https://vault:8200",
            )
        if not cfg.transit_key:
            raise ConfigError(
                "keys.provider = 'vault' but vault.transit_key is empty",
                hint="name the Transit key (created with derived=true)",
            )
        if cfg.auth == "token" and not cfg.token_file and not self._env.get("VAULT_TOKEN"):
            raise ConfigError(
                "vault.auth = 'token' but neither vault.token_file nor $VAULT_TOKEN is set",
                hint="point vault.token_file at a 0600 file holding the token",
            )
        if cfg.auth == "approle" and not cfg.role_id:
            raise ConfigError("vault.auth = 'approle' needs vault.role_id")
        if (
            cfg.auth == "approle"
            and not cfg.secret_id_file
            and not self._env.get("VAULT_SECRET_ID")
        ):
            raise ConfigError(
                "vault.auth = 'approle' but neither vault.secret_id_file nor $VAULT_SECRET_ID "
                "is set",
                hint="point vault.secret_id_file at a 0600 file holding the secret id",
            )
        if cfg.auth == "kubernetes" and not cfg.kubernetes_role:
            raise ConfigError("vault.auth = 'kubernetes' needs vault.kubernetes_role")
        self.key_path = f"{cfg.mount.strip('/')}/{cfg.transit_key}"
        self._client: hvac.Client | None = None

    # --- connection and errors ---------------------------------------------

    def _connect(self) -> hvac.Client:
        cfg = self.cfg
        verify: bool | str = cfg.ca_cert or True
        if cfg.ca_cert and not Path(cfg.ca_cert).is_file():
            raise ConfigError(f"vault.ca_cert = {cfg.ca_cert!r} is not a file")
        client = hvac.Client(
            url=self.address,
            namespace=cfg.namespace or None,
            verify=verify,
            timeout=cast(int, cfg.timeout),  # hvac's stub says int; requests takes a float
        )
        mount = cfg.auth_mount or cfg.auth
        if cfg.auth == "token":
            client.token = (
                read_secret_file(Path(cfg.token_file), "Vault token")
                if cfg.token_file
                else self._env["VAULT_TOKEN"]
            )
        elif cfg.auth == "approle":
            secret_id = (
                read_secret_file(Path(cfg.secret_id_file), "Vault AppRole secret id")
                if cfg.secret_id_file
                else self._env["VAULT_SECRET_ID"]
            )
            self._login(
                lambda: client.auth.approle.login(
                    role_id=cfg.role_id, secret_id=secret_id, mount_point=mount
                )
            )
        else:
            try:
                jwt = Path(cfg.jwt_file).read_text().strip()
            except OSError:
                raise KeyProviderError(
                    f"Kubernetes service account token {cfg.jwt_file} is not readable",
                    hint="run inside a pod with a service account token, or set vault.jwt_file",
                ) from None
            self._login(
                lambda: client.auth.kubernetes.login(
                    role=cfg.kubernetes_role, jwt=jwt, mount_point=mount
                )
            )
        return client

    def _login(self, login: Callable[[], Any]) -> None:
        try:
            login()
        except (
            hvac.exceptions.InvalidRequest,
            hvac.exceptions.Forbidden,
            hvac.exceptions.Unauthorized,
            hvac.exceptions.InvalidPath,
        ) as exc:
            raise KeyAccessDenied(
                f"Vault at {self.address} refused the {self.cfg.auth} login ({_vault_errors(exc)})",
                hint=f"check the role and its secret, and that auth method "
                f"'{self.cfg.auth_mount or self.cfg.auth}' is enabled",
            ) from None

    def _call(self, what: str, op: Callable[[hvac.Client], T]) -> T:
        """One Transit operation with bounded retries of transient failures only."""
        attempts = self.cfg.retries + 1
        relogged = False
        last = ""
        attempt = 0
        while attempt < attempts:
            attempt += 1
            try:
                if self._client is None:
                    self._client = self._connect()
                return op(self._client)
            except requests.exceptions.SSLError:
                raise KeyProviderUnavailable(
                    f"TLS verification of Vault at {self.address} failed",
                    hint="set vault.ca_cert to the CA bundle that signed Vault's certificate",
                ) from None
            except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
                last = (
                    "timed out"
                    if isinstance(exc, requests.exceptions.Timeout)
                    else ("connection failed")
                )
            except hvac.exceptions.VaultDown as exc:
                if "sealed" in str(exc).lower():
                    raise KeyProviderUnavailable(
                        f"Vault is sealed ({self.address}): it cannot {what}",
                        hint="unseal Vault (`vault operator unseal`, or check auto-unseal); "
                        "a restore can use --recovery-key meanwhile",
                    ) from None
                last = f"unavailable: {_vault_errors(exc)}"
            except (
                hvac.exceptions.InternalServerError,
                hvac.exceptions.BadGateway,
                hvac.exceptions.RateLimitExceeded,
            ) as exc:
                last = f"server error: {_vault_errors(exc)}"
            except (hvac.exceptions.Forbidden, hvac.exceptions.Unauthorized) as exc:
                if (self.cfg.auth != "token" or self.cfg.token_file) and not relogged:
                    # the login's token may have expired, or Vault Agent renewed the token file
                    relogged, self._client = True, None
                    attempt -= 1
                    continue
                raise KeyAccessDenied(
                    f"Vault denied the request to {what} with Transit key {self.key_path} "
                    f"({_vault_errors(exc)})",
                    hint="check that the token is valid and not expired, and that its policy "
                    f"allows 'update' on {self.cfg.mount}/encrypt/{self.cfg.transit_key}, "
                    f"{self.cfg.mount}/decrypt/... and {self.cfg.mount}/rewrap/...; a missing "
                    "key also shows as denied (see docs/key-management.md)",
                ) from None
            except hvac.exceptions.InvalidPath as exc:
                raise KeyAccessDenied(
                    f"Vault has no Transit mount or key at {self.key_path} ({_vault_errors(exc)})",
                    hint="check vault.mount, vault.transit_key and vault.namespace",
                ) from None
            except hvac.exceptions.InvalidRequest as exc:
                raise self._bad_request(what, exc) from None
            if attempt < attempts:
                time.sleep(min(_BACKOFF * 2 ** (attempt - 1), 5.0))
        raise KeyProviderUnavailable(
            f"Vault at {self.address} is unreachable: {last} after {attempts} attempt(s) "
            f"(timeout {self.cfg.timeout:g}s)",
            hint="check vault.address, the network and that Vault runs; a restore can use "
            "--recovery-key meanwhile",
        )

    def _bad_request(self, what: str, exc: hvac.exceptions.VaultError) -> KeyProviderError:
        detail = _vault_errors(exc)
        low = detail.lower()
        if "authentication failed" in low or "invalid ciphertext" in low:
            return WrongKey(
                f"Vault could not {what} with Transit key {self.key_path}: the wrapped key was "
                "made by another key, modified, or belongs to another backup",
                hint="the key object must come from the same backup as its data",
            )
        if "not found" in low:
            return KeyAccessDenied(
                f"Transit key {self.key_path} does not exist in Vault at {self.address}",
                hint="create it: `vault write -f transit/keys/NAME derived=true`",
            )
        if "too old" in low or "disallowed" in low or "min_decryption_version" in low:
            return KeyAccessDenied(
                f"Transit key {self.key_path} cannot {what}: that key version is retired "
                f"(below min_decryption_version) ({detail})",
                hint="lower min_decryption_version to that version (`vault write "
                f"{self.cfg.mount}/keys/{self.cfg.transit_key}/config min_decryption_version=N`), "
                "or restore with --recovery-key; `ebk keys status` lists what depends on it",
            )
        if "context" in low and "derived" in low:
            return KeyAccessDenied(
                f"Transit key {self.key_path} is misconfigured ({detail})",
                hint="ebk needs a key created with derived=true",
            )
        return KeyProviderError(f"Vault rejected the request to {what} ({detail})")

    # --- the seam ----------------------------------------------------------

    def _kek_id(self, ciphertext: str) -> str:
        match = _VERSION.match(ciphertext)
        if match is None:
            raise KeyProviderError(f"Vault returned an unexpected ciphertext from {self.key_path}")
        return f"{self.key_path}:v{match.group(1)}"

    def _ciphertext(self, wrapped: WrappedKey) -> str:
        try:
            text = wrapped.ciphertext.decode("ascii")
        except UnicodeDecodeError:
            text = ""
        if not _VERSION.match(text):
            raise WrongKey(f"slot {wrapped.provider}/{wrapped.kek_id} is not a Transit ciphertext")
        return text

    def wrap(self, dek: bytes, context: Mapping[str, str]) -> WrappedKey:
        ctx = base64.b64encode(canonical_context(context)).decode()
        plain = base64.b64encode(dek).decode()
        resp = self._call(
            "wrap a data key",
            lambda c: c.secrets.transit.encrypt_data(
                name=self.cfg.transit_key, plaintext=plain, context=ctx, mount_point=self.cfg.mount
            ),
        )
        ciphertext = str(resp["data"]["ciphertext"])
        return WrappedKey(self.name, self._kek_id(ciphertext), ciphertext.encode("ascii"))

    def unwrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> bytes:
        ciphertext = self._ciphertext(wrapped)
        ctx = base64.b64encode(canonical_context(context)).decode()
        resp = self._call(
            f"unwrap a data key wrapped under {wrapped.kek_id}",
            lambda c: c.secrets.transit.decrypt_data(
                name=self.cfg.transit_key,
                ciphertext=ciphertext,
                context=ctx,
                mount_point=self.cfg.mount,
            ),
        )
        return base64.b64decode(resp["data"]["plaintext"])

    def rewrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> WrappedKey:
        """Transit rewrap: the DEK never leaves Vault; the slot moves to the latest version."""
        ciphertext = self._ciphertext(wrapped)
        ctx = base64.b64encode(canonical_context(context)).decode()
        resp = self._call(
            f"rewrap a data key wrapped under {wrapped.kek_id}",
            lambda c: c.secrets.transit.rewrap_data(  # type: ignore[no-untyped-call]
                name=self.cfg.transit_key,
                ciphertext=ciphertext,
                context=ctx,
                mount_point=self.cfg.mount,
            ),
        )
        new = str(resp["data"]["ciphertext"])
        return WrappedKey(self.name, self._kek_id(new), new.encode("ascii"))

    def owns(self, wrapped: WrappedKey) -> bool:
        return wrapped.provider == self.name and wrapped.kek_id.startswith(f"{self.key_path}:v")

    # --- lifecycle (ebk/keys/lifecycle.py) ---------------------------------
    # Needs, beyond encrypt/decrypt/rewrap: "read" on MOUNT/keys/NAME (status),
    # "update" on MOUNT/keys/NAME/rotate (rotate) and MOUNT/keys/NAME/config (retire).

    rewrap_needs_force = False

    def _key_metadata(self) -> dict[str, Any]:
        resp = self._call(
            "read the Transit key's metadata",
            lambda c: c.secrets.transit.read_key(  # type: ignore[no-untyped-call]
                name=self.cfg.transit_key, mount_point=self.cfg.mount
            ),
        )
        return dict(resp["data"])

    def _admin(self, what: str, path: str, op: Callable[[hvac.Client], Any]) -> None:
        """A key-management call; denied, the hint names the one capability it needs."""
        try:
            self._call(what, op)
        except KeyAccessDenied as exc:
            raise KeyAccessDenied(
                exc.message,
                hint=f"this needs 'update' on {path} (an admin can do it instead; "
                "docs/key-management.md, Key lifecycle)",
            ) from None

    def kek_info(self) -> KekInfo:
        try:
            data = self._key_metadata()
        except KeyAccessDenied as exc:
            raise KeyAccessDenied(
                exc.message,
                hint=f"key status needs 'read' on {self.cfg.mount}/keys/{self.cfg.transit_key} "
                f"(rotation: 'update' on {self.cfg.mount}/keys/{self.cfg.transit_key}/rotate; "
                "docs/key-management.md, Key lifecycle)",
            ) from None
        latest = int(data["latest_version"])
        min_dec = int(data.get("min_decryption_version") or 1)
        created = {str(k): _transit_time(v) for k, v in dict(data.get("keys") or {}).items()}
        versions = [
            KekVersion(
                f"{self.key_path}:v{n}",
                created.get(str(n)),
                usable=n >= min_dec and str(n) in created,
                current=n == latest,
            )
            for n in range(1, latest + 1)
        ]
        period = data.get("auto_rotate_period") or 0
        notes = [
            f"auto_rotate_period = {int(period) // 3600}h"
            if period
            else "auto_rotate_period is off (docs/key-management.md: 4320h = 180 days)"
        ]
        return KekInfo(self.name, self.key_path, versions, notes=notes)

    def rotate_kek(self) -> str:
        self._admin(
            "rotate the Transit key",
            f"{self.cfg.mount}/keys/{self.cfg.transit_key}/rotate",
            lambda c: c.secrets.transit.rotate_key(  # type: ignore[no-untyped-call]
                name=self.cfg.transit_key, mount_point=self.cfg.mount
            ),
        )
        info = self.kek_info()
        return info.current.id if info.current else self.key_path

    def version_of(self, slot: WrappedKey) -> str:
        return slot.kek_id

    def retire_versions(self, kek_ids: list[str], *, apply: bool) -> list[str]:
        """Raise min_decryption_version above the newest retired version."""
        numbers = []
        for kek_id in kek_ids:
            prefix = f"{self.key_path}:v"
            if not kek_id.startswith(prefix) or not kek_id[len(prefix) :].isdigit():
                raise KeyProviderError(f"{kek_id} is not a version of {self.key_path}")
            numbers.append(int(kek_id[len(prefix) :]))
        new_min = max(numbers) + 1
        what = f"set min_decryption_version = {new_min} on Transit key {self.key_path}"
        if not apply:
            return [f"would {what}"]
        self._admin(
            "retire old key versions",
            f"{self.cfg.mount}/keys/{self.cfg.transit_key}/config",
            lambda c: c.secrets.transit.update_key_configuration(  # type: ignore[no-untyped-call]
                name=self.cfg.transit_key,
                min_decryption_version=new_min,
                mount_point=self.cfg.mount,
            ),
        )
        return [what]

    def describe(self) -> dict[str, str]:
        out = {
            "provider": self.name,
            "address": self.address,
            "key": self.key_path,
            "auth": self.cfg.auth,
        }
        if self.cfg.namespace:
            out["namespace"] = self.cfg.namespace
        return out


def _transit_time(value: object) -> datetime | None:
    """Transit reports a version's creation as Unix seconds (or RFC 3339 for some keys)."""
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    return None


def _vault_errors(exc: hvac.exceptions.VaultError) -> str:
    """Vault's own error text on one line ("1 error occurred: * x" becomes "x")."""
    errors = getattr(exc, "errors", None)
    if isinstance(errors, list) and errors:
        text = "; ".join(str(e) for e in errors)
    else:
        text = str(exc).split(", on ")[0] or type(exc).__name__
    text = re.sub(r"\d+ errors? occurred:", "", text)
    text = "; ".join(part.strip(" *\t") for part in text.splitlines() if part.strip(" *\t"))
    return text[:300]
