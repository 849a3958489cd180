"""TLS contexts from certfile/keyfile (dispy_core.security), with certificates made by openssl."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from pathlib import Path

import pytest

from dispy_core.aio.connection import Connection, accept_connection, open_connection
from dispy_core.protocol.framing import MAC_SIZE
from dispy_core.protocol.messages import Notice
from dispy_core.security import TLSConfig, TLSConfigError, client_context, server_context
from dispy_core.testing import async_test

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")


def make_cert(directory: Path, name: str) -> tuple[Path, Path, Path]:
    """A self-signed EC certificate: (key file, cert file, key+cert in one file)."""
    key = directory / f"{name}.key"
    cert = directory / f"{name}.crt"
    both = directory / f"{name}.pem"
    command = "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2"
    subprocess.run(
        [*command.split(), "-keyout", str(key), "-out", str(cert), "-subj", f"/CN={name}"],
        check=True,
        capture_output=True,
        timeout=30,
    )
    both.write_bytes(key.read_bytes() + cert.read_bytes())
    return key, cert, both


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    directory = tmp_path_factory.mktemp("certs")
    return {"a": make_cert(directory, "dispy-a"), "b": make_cert(directory, "dispy-b")}


# --- configuration ----------------------------------------------------------------------------


def test_tls_is_off_without_certfile():
    tls = TLSConfig(None)
    assert not tls.enabled
    assert tls.server is None
    assert tls.client is None


def test_missing_certfile_is_named(tmp_path):
    missing = tmp_path / "nope.pem"
    with pytest.raises(TLSConfigError, match=f"certfile '{missing}' does not exist"):
        TLSConfig(str(missing))


def test_missing_keyfile_is_named(certs, tmp_path):
    _key, cert, _both = certs["a"]
    missing = tmp_path / "nope.key"
    with pytest.raises(TLSConfigError, match=f"keyfile '{missing}' does not exist"):
        TLSConfig(str(cert), str(missing))


def test_directory_as_certfile_is_refused(tmp_path):
    with pytest.raises(TLSConfigError, match="not a file"):
        TLSConfig(str(tmp_path))


def test_keyfile_without_certfile_is_refused(certs):
    key, _cert, _both = certs["a"]
    with pytest.raises(TLSConfigError, match="keyfile given without certfile"):
        TLSConfig(None, str(key))


def test_certificate_without_its_key_is_refused(certs):
    _key, cert, _both = certs["a"]
    with pytest.raises(TLSConfigError, match=f"cannot use certfile '{cert}'"):
        TLSConfig(str(cert))


def test_garbage_certfile_is_refused(tmp_path):
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate\n")
    with pytest.raises(TLSConfigError, match="cannot use certfile"):
        TLSConfig(str(bad))


def test_key_of_another_certificate_is_refused(certs):
    key_b, _cert_b, _both_b = certs["b"]
    _key_a, cert_a, _both_a = certs["a"]
    with pytest.raises(TLSConfigError, match="with keyfile"):
        TLSConfig(str(cert_a), str(key_b))


def test_tls_config_error_is_a_value_error():
    assert issubclass(TLSConfigError, ValueError)


def test_key_and_certificate_in_one_file_load(certs):
    _key, _cert, both = certs["a"]
    tls = TLSConfig(str(both))
    assert tls.enabled
    assert tls.server is not None
    assert tls.client is not None


def test_key_and_certificate_in_separate_files_load(certs):
    key, cert, _both = certs["a"]
    tls = TLSConfig(str(cert), str(key))
    assert tls.enabled


def test_contexts_require_the_peer_certificate(certs):
    _key, _cert, both = certs["a"]
    for ctx in (server_context(str(both)), client_context(str(both))):
        assert ctx.verify_mode == ssl.CERT_REQUIRED
        assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2
        assert not ctx.check_hostname


# --- connections over 127.0.0.1 -----------------------------------------------------------------


async def _tls_exchange(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> bytes:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(await reader.readexactly(5))
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    async with server:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx)
        try:
            writer.write(b"hello")
            await writer.drain()
            return await reader.readexactly(5)
        finally:
            writer.close()


@async_test()
async def test_tls_connection_with_the_same_certificate_completes(certs):
    key, cert, both = certs["a"]
    server = server_context(str(both))
    client = client_context(str(cert), str(key))
    assert await _tls_exchange(server, client) == b"hello"


@async_test()
async def test_tls_connection_with_a_different_certificate_fails(certs):
    _key_a, _cert_a, both_a = certs["a"]
    _key_b, _cert_b, both_b = certs["b"]
    with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
        await _tls_exchange(server_context(str(both_a)), client_context(str(both_b)))


@async_test()
async def test_dispy_connection_over_tls_carries_no_mac(certs):
    _key, _cert, both = certs["a"]
    tls = TLSConfig(str(both))
    accepted: asyncio.Queue[Connection | BaseException] = asyncio.Queue()

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await accepted.put(
                await accept_connection(
                    reader, writer, secret="s", role="client", name="c", timeout=5.0
                )
            )
        except Exception as exc:
            await accepted.put(exc)

    server = await asyncio.start_server(on_client, "127.0.0.1", 0, ssl=tls.server)
    port = server.sockets[0].getsockname()[1]
    async with server:
        node = await open_connection(
            "127.0.0.1",
            port,
            secret="s",
            role="node",
            name="n",
            timeout=5.0,
            ssl_context=tls.client,
        )
        client = await accepted.get()
        assert isinstance(client, Connection)
        # TLS protects the frames, so neither side adds a MAC
        assert node._encoder.authenticator is None
        assert client._decoder.authenticator is None
        await node.send(Notice(text="secure"), b"x" * MAC_SIZE)
        assert await client.recv() == (Notice(text="secure"), b"x" * MAC_SIZE)
        await node.close()
        await client.close()
