"""Stacked crypto filesystems: gocryptfs, eCryptfs, CryFS, securefs, EncFS, rclone crypt.

These encrypt file by file and store ciphertext in another directory, so the
filesystem type in mountinfo is the proof; the storage below holds only
ciphertext.  gocryptfs' cipher comes from gocryptfs.conf in the cipher
directory (the mount source), eCryptfs' from its mount options.
"""

from __future__ import annotations

import json
from pathlib import Path

from ebk.preflight.model import Evidence, Status
from ebk.preflight.mountinfo import Mount

FUSE_CRYPTO = {
    "fuse.gocryptfs": "gocryptfs",
    "fuse.cryfs": "CryFS",
    "fuse.securefs": "securefs",
    "fuse.encfs": "EncFS",
    "fuse.rclone": "",  # only a 'crypt' remote encrypts; decided by the source name
}


def gocryptfs_cipher(conf: dict[str, object]) -> str:
    flags = conf.get("FeatureFlags", [])
    flags = flags if isinstance(flags, list) else []
    if "XChaCha20Poly1305" in flags:
        contents = "XChaCha20-Poly1305"
    elif "AESSIV" in flags:
        contents = "AES-256-SIV"
    else:
        contents = "AES-256-GCM"
    names = "EME wide-block" if "EMENames" in flags else "plaintext"
    if "PlaintextNames" in flags:
        names = "plaintext"
    return f"contents {contents}, filenames {names}"


def fuse_crypto_evidence(mount: Mount) -> Evidence | None:
    """Evidence when ``mount`` is a crypto filesystem; None for any other type."""
    if mount.fstype == "ecryptfs":
        cipher = mount.super_option("ecryptfs_cipher") or "aes"
        bits = mount.super_option("ecryptfs_key_bytes")
        cipher_text = cipher
        if bits and bits.isdigit():
            cipher_text += f" ({int(bits) * 8}-bit key)"
        sig = mount.super_option("ecryptfs_sig") or "?"
        return Evidence(
            Status.ENCRYPTED,
            "eCryptfs",
            f"{mount.mount_point} is an eCryptfs mount over {mount.source}, {cipher_text}",
            cipher_text,
            f"mount key signature {sig} in the kernel user keyring",
        )
    if mount.fstype not in FUSE_CRYPTO:
        return None
    name = FUSE_CRYPTO[mount.fstype]
    if mount.fstype == "fuse.rclone":
        if "crypt" not in mount.source.lower():
            return None
        name = "rclone crypt"
    if name == "gocryptfs":
        conf_path = Path(mount.source) / "gocryptfs.conf"
        try:
            conf = json.loads(conf_path.read_text())
        except (OSError, ValueError):
            return Evidence(
                Status.ENCRYPTED,
                name,
                f"{mount.mount_point} is a gocryptfs mount over {mount.source} "
                "(its gocryptfs.conf is elsewhere or unreadable; cipher not shown)",
                key_location="master key wrapped in a gocryptfs.conf given by -config",
            )
        cipher = gocryptfs_cipher(conf)
        return Evidence(
            Status.ENCRYPTED,
            name,
            f"{mount.mount_point} is a gocryptfs v{conf.get('Version', '?')} mount over "
            f"{mount.source}, {cipher}",
            cipher,
            f"master key wrapped (scrypt of the password) in {conf_path}",
        )
    return Evidence(
        Status.ENCRYPTED,
        name,
        f"{mount.mount_point} is a {name} mount over {mount.source}",
        key_location=f"{name} configuration next to the ciphertext in {mount.source}",
    )
