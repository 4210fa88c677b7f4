"""A TLS front for moto's plain-HTTP server: nginx with a throwaway self-signed cert.

pgBackRest speaks only HTTPS to S3, and moto's built-in TLS drops keep-alive
connections without a close_notify (OpenSSL 3: "unexpected eof").  Both tools
go through the same nginx so the comparison stays fair.
"""

from __future__ import annotations

import datetime
import ipaddress
import subprocess
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "tls.crt", directory / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


class TlsProxy:
    def __init__(self, directory: Path, listen_port: int, upstream_port: int) -> None:
        self.directory = directory
        self.cert, key = self_signed(directory)
        conf = directory / "nginx.conf"
        conf.write_text(f"""
daemon off;
worker_processes 1;
pid {directory}/nginx.pid;
error_log {directory}/nginx-error.log warn;
events {{ worker_connections 256; }}
http {{
  access_log off;
  client_max_body_size 0;
  proxy_request_buffering off;
  proxy_buffering off;
  client_body_temp_path {directory}/body;
  proxy_temp_path {directory}/proxy;
  upstream moto {{ server 127.0.0.1:{upstream_port}; keepalive 16; }}
  server {{
    listen 127.0.0.1:{listen_port} ssl;
    ssl_certificate {self.cert};
    ssl_certificate_key {key};
    location / {{
      proxy_pass http://moto;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $http_host;
    }}
  }}
}}
""")
        self.proc = subprocess.Popen(
            ["nginx", "-c", str(conf), "-p", str(directory)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.5)
        if self.proc.poll() is not None:
            raise SystemExit(f"nginx failed: {(directory / 'nginx-error.log').read_text()}")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
