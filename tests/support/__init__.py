"""The one support package of the test suite; each module has one job.

postgres        throwaway PostgreSQL clusters (run as the postgres user)
ebkenv          an ebk config and CLI runner around a test cluster
refusal         assert_refused: exact exit code, no traceback, the message
needs           skip locally / fail in CI when a tool or component is missing
net             free loopback ports, waiting for a listener
emulators       the launcher for moto, gcp-storage-emulator and Azurite
openbao         the launcher for OpenBao (Vault-compatible KMS)
fixtures        session-scoped emulator fixtures (a pytest plugin, tests/conftest.py)
jsonapi         a tiny JSON HTTP stand-in for cloud metadata / Kubernetes APIs
daemon_process  `ebk daemon` as a real process: log events, endpoints, signals
stream_layout   cutting stored objects apart along stream-v1, for tampering
encrypted_fs    loop-mounted ext4 (+fscrypt) and gocryptfs mounts
docker_engine   a private dockerd for the container tests
docker_image    the registry-free debootstrap base image
vm              booting Debian's kernel under virtme-ng (dm-crypt tests)
"""
