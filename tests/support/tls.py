"""A private certificate authority for tests of TLS to Redis and Postgres, and the servers that use
it: a `redis-server` listening on TLS only, and a Postgres cluster with `ssl=on` that accepts
nothing but TLS connections authenticated by a client certificate.

Why a client certificate for Postgres: with it, a connection that lost the URL's TLS parameters on
the way (a pool, the lock pool, the metrics connection, a probe, migrate building its own
connection string) is refused outright, instead of silently succeeding over libpq's default
`sslmode=prefer`. The server certificate names 127.0.0.1 and localhost (subjectAltName), so
`sslmode=verify-full` and redis-py's hostname check pass on loopback.
"""

import contextlib
import datetime
import ipaddress
import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import psycopg
import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support.private_servers import PrivatePostgres
from tests.support.processes import free_port, spawn, stop_process, wait_until


@dataclass(frozen=True)
class TestCA:
    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path  # CN=postgres: the Postgres user it authenticates
    client_key: Path


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _cert(subject: str, key, issuer: str, issuer_key, *, ca: bool, san=None) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_test_ca(directory: Path) -> TestCA:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate, as PEM files."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, server_key, client_key = _key(), _key(), _key()
    ca = _cert("dark test CA", ca_key, "dark test CA", ca_key, ca=True)
    server = _cert(
        "localhost",
        server_key,
        "dark test CA",
        ca_key,
        ca=False,
        san=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    client = _cert("postgres", client_key, "dark test CA", ca_key, ca=False)
    files = TestCA(
        ca_cert=directory / "ca.crt",
        server_cert=directory / "server.crt",
        server_key=directory / "server.key",
        client_cert=directory / "client.crt",
        client_key=directory / "client.key",
    )
    certs = ((ca, files.ca_cert), (server, files.server_cert), (client, files.client_cert))
    for cert, path in certs:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(server_key, files.server_key)
    _write_key(client_key, files.client_key)
    return files


# --- Redis on TLS only ------------------------------------------------------------------------


@dataclass
class TlsRedis:
    workdir: Path
    ca: TestCA
    port: int
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"rediss://127.0.0.1:{self.port}/0"

    @property
    def plain_url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


@contextlib.contextmanager
def tls_redis(workdir: Path, ca: TestCA):
    """`redis-server` with `--port 0` (no plain-text listener) and a TLS port; clients need no
    certificate of their own, they verify the server's against the test CA."""
    workdir.mkdir(parents=True, exist_ok=True)
    server = TlsRedis(workdir, ca, free_port())
    log_path = workdir / "redis-tls.log"
    server.proc = spawn(
        [
            shutil.which("redis-server") or "redis-server",
            "--port", "0",
            "--tls-port", str(server.port),
            "--bind", "127.0.0.1",
            "--tls-cert-file", str(ca.server_cert),
            "--tls-key-file", str(ca.server_key),
            "--tls-ca-cert-file", str(ca.ca_cert),
            "--tls-auth-clients", "no",
            "--dir", str(workdir),
            "--save", "",
            "--daemonize", "no",
            "--logfile", str(log_path),
        ],
    )  # fmt: skip

    def answers() -> bool:
        if server.proc.poll() is not None:
            raise RuntimeError(f"redis-server exited: {log_path.read_text()[-2000:]}")
        with redis.Redis.from_url(
            server.url, ssl_ca_certs=str(ca.ca_cert), ssl_cert_reqs="required", socket_timeout=1
        ) as client:
            return client.ping()

    try:
        wait_until(answers, 15, what="TLS redis-server")
        yield server
    finally:
        stop_process(server.proc)


# --- Postgres with ssl=on, TLS and a client certificate only ----------------------------------


class TlsPostgres(PrivatePostgres):
    ca: TestCA

    def tls_params(self) -> str:
        return (
            f"sslmode=verify-full&sslrootcert={self.ca.ca_cert}"
            f"&sslcert={self.ca.client_cert}&sslkey={self.ca.client_key}"
        )

    @property
    def admin_dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres?{self.tls_params()}"

    def url(self, database: str, params: str | None = None) -> str:
        query = self.tls_params() if params is None else params
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}?{query}"

    def init(self) -> None:
        super().init()
        tls_dir = self.root / "tls"
        tls_dir.mkdir()
        for source in (self.ca.ca_cert, self.ca.server_cert, self.ca.server_key):
            shutil.copy(source, tls_dir / source.name)
        (self.data / "pg_hba.conf").write_text(
            "local all all trust\nhostssl all all 127.0.0.1/32 cert\n"
        )
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(
                f"ssl = on\nssl_cert_file = '{tls_dir / 'server.crt'}'\n"
                f"ssl_key_file = '{tls_dir / 'server.key'}'\nssl_ca_file = '{tls_dir / 'ca.crt'}'\n"
            )
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            for path in (tls_dir, *tls_dir.iterdir()):
                os.chown(path, user.pw_uid, user.pw_gid)
        (tls_dir / "server.key").chmod(0o600)

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@contextlib.contextmanager
def tls_postgres(ca: TestCA):
    root = Path(tempfile.mkdtemp(prefix="dark-test-pgtls-"))
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(root, user.pw_uid, user.pw_gid)
    server = TlsPostgres(root)
    server.ca = ca
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
