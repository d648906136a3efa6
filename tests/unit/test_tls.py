"""TLS and mTLS through a real in-process server and the SDK, with certificates this test
makes (a CA, the server's certificate for 127.0.0.1, client certificates from that CA and
from another one): the SDK connects with a CA bundle, and under mTLS only with a client
certificate the server's client CA signed. The plaintext health port answers probes."""

from __future__ import annotations

import datetime
import ipaddress
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

import graft_client
from graft.apikeys import hash_token, new_token
from graft.config import Config
from graft.server import BackgroundServer
from graft_client import Client

Key = ec.EllipticCurvePrivateKey


@dataclass
class Issued:
    cert: x509.Certificate
    key: Key

    def write(self, folder: Path, stem: str) -> tuple[Path, Path]:
        cert_path, key_path = folder / f"{stem}.crt", folder / f"{stem}.key"
        cert_path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            self.key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return cert_path, key_path


def _issue(
    subject: str,
    issuer: Issued | None,
    *,
    ca: bool = False,
    server: bool = False,
) -> Issued:
    """A P-256 certificate for `subject`, self-signed when `issuer` is None."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.cert.subject if issuer else name)
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
    else:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    signer = issuer.key if issuer else key
    return Issued(builder.sign(signer, hashes.SHA256()), key)


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    stranger_cert: Path  # a client certificate from another CA
    stranger_key: Path
    other_ca: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca = _issue("graft test CA", None, ca=True)
    other = _issue("someone else's CA", None, ca=True)
    ca_path, _ = ca.write(folder, "ca")
    other_path, _ = other.write(folder, "other-ca")
    server = _issue("graft-server", ca, server=True).write(folder, "server")
    client = _issue("pipeline", ca).write(folder, "client")
    stranger = _issue("stranger", other).write(folder, "stranger")
    return Pki(ca_path, *server, *client, *stranger, other_path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _health(target: str, credentials: grpc.ChannelCredentials | None = None) -> int:
    channel = (
        grpc.secure_channel(target, credentials)
        if credentials is not None
        else grpc.insecure_channel(target)
    )
    with channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=10
        )
    return int(reply.status)


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[BackgroundServer]:
    config = Config(
        data_dir=tmp_path_factory.mktemp("tls"),
        embedded_worker=False,
        tls_cert=str(pki.server_cert),
        tls_key=str(pki.server_key),
        health_port=_free_port(),
    )
    with BackgroundServer(config) as running:
        yield running


def test_tls_with_a_ca_bundle(tls_server: BackgroundServer, pki: Pki) -> None:
    with Client(tls_server.target, ca_cert=pki.ca, timeout=10) as client:
        assert client.list_jobs() == []
    pem = pki.ca.read_bytes()  # the bundle's bytes work as well as its path
    with Client(tls_server.target, ca_cert=pem, timeout=10) as client:
        assert client.list_backbones()


def test_tls_server_name_overrides_the_targets_host(tls_server: BackgroundServer, pki: Pki) -> None:
    port = tls_server.port  # the certificate names localhost and 127.0.0.1, nothing else
    with Client(
        f"127.0.0.1:{port}", ca_cert=pki.ca, tls_server_name="localhost", timeout=10
    ) as client:
        assert client.list_jobs() == []
    with (
        Client(
            f"127.0.0.1:{port}", ca_cert=pki.ca, tls_server_name="graft.example", timeout=5
        ) as client,
        pytest.raises(graft_client.Unavailable),
    ):
        client.list_jobs()


def test_tls_refuses_plaintext_and_an_unknown_ca(tls_server: BackgroundServer, pki: Pki) -> None:
    for client in (
        Client(tls_server.target, timeout=5),  # plaintext against a TLS port
        Client(tls_server.target, ca_cert=pki.other_ca, timeout=5),  # server not trusted
    ):
        with client, pytest.raises(graft_client.Unavailable):
            client.list_jobs()


def test_the_health_port_answers_in_plaintext_and_serves_nothing_else(
    tls_server: BackgroundServer,
) -> None:
    target = f"127.0.0.1:{tls_server.config.health_port}"
    assert _health(target) in (
        health_pb2.HealthCheckResponse.SERVING,
        health_pb2.HealthCheckResponse.NOT_SERVING,  # no health monitor in-process
    )
    with Client(target, timeout=5) as client, pytest.raises(graft_client.Unimplemented):
        client.list_jobs()


@pytest.fixture(scope="module")
def mtls_server(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[BackgroundServer]:
    config = Config(
        data_dir=tmp_path_factory.mktemp("mtls"),
        embedded_worker=False,
        tls_cert=str(pki.server_cert),
        tls_key=str(pki.server_key),
        tls_client_ca=str(pki.ca),
        auth="on",
    )
    with BackgroundServer(config) as running:
        yield running


def test_mtls_accepts_a_client_certificate_from_its_ca(
    mtls_server: BackgroundServer, pki: Pki
) -> None:
    key_id, token = new_token()
    mtls_server.services.store.add_api_key(key_id, hash_token(token), "acme")
    with Client(
        mtls_server.target,
        ca_cert=pki.ca,
        client_cert=pki.client_cert,
        client_key=pki.client_key,
        api_key=token,
        timeout=10,
    ) as client:
        assert client.list_jobs() == []
    # The certificate lets the client connect; the API key still says who it is.
    with (
        Client(
            mtls_server.target,
            ca_cert=pki.ca,
            client_cert=pki.client_cert,
            client_key=pki.client_key,
            timeout=10,
        ) as client,
        pytest.raises(graft_client.Unauthenticated),
    ):
        client.list_jobs()


def test_mtls_refuses_a_client_without_a_certificate_or_with_a_strangers(
    mtls_server: BackgroundServer, pki: Pki
) -> None:
    for client in (
        Client(mtls_server.target, ca_cert=pki.ca, timeout=5),
        Client(
            mtls_server.target,
            ca_cert=pki.ca,
            client_cert=pki.stranger_cert,
            client_key=pki.stranger_key,
            timeout=5,
        ),
    ):
        with client, pytest.raises(graft_client.Unavailable):
            client.list_backbones()
    with pytest.raises(grpc.RpcError) as info:  # health on the TLS port needs it too
        _health(mtls_server.target, grpc.ssl_channel_credentials(pki.ca.read_bytes()))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_client_tls_options_are_checked(pki: Pki) -> None:
    with pytest.raises(ValueError, match="both"):
        Client("127.0.0.1:1", client_cert=pki.client_cert)
    with pytest.raises(FileNotFoundError):
        Client("127.0.0.1:1", ca_cert=pki.ca.parent / "missing.pem")


def test_an_unreadable_certificate_is_a_clear_error(tmp_path: Path, pki: Pki) -> None:
    from graft.server import server_credentials

    config = Config(tls_cert=str(tmp_path / "nope.crt"), tls_key=str(pki.server_key))
    with pytest.raises(ValueError, match=r"cannot read the TLS certificate .*nope\.crt"):
        server_credentials(config)
    swapped = Config(tls_cert=str(pki.server_key), tls_key=str(pki.server_cert))
    with pytest.raises(ValueError, match="not PEM"):
        server_credentials(swapped)


def test_a_key_that_fits_another_certificate_is_a_clear_error(tmp_path: Path, pki: Pki) -> None:
    config = Config(data_dir=tmp_path, tls_cert=str(pki.server_cert), tls_key=str(pki.client_key))
    with pytest.raises(ValueError, match="not the private key of"):
        BackgroundServer(config)
