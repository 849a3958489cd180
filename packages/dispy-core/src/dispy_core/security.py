"""TLS contexts from the ``certfile``/``keyfile`` options.

Both ends of a dispy connection hold the same certificate (and key), as the reference
describes, so each side presents it and accepts only a peer that presents it too: the
certificate file is also the only trust anchor. Host names are not checked because nodes
are reached by address and the certificate is pinned instead.
"""

from __future__ import annotations

import os
import ssl


class TLSConfigError(ValueError):
    """The certificate or key file is missing or unusable."""


def _check_files(certfile: str, keyfile: str | None) -> None:
    for label, path in (("certfile", certfile), ("keyfile", keyfile)):
        if path is not None and not os.path.isfile(path):
            raise TLSConfigError(f"{label} {path!r} does not exist or is not a file")


def _context(purpose: int, certfile: str, keyfile: str | None) -> ssl.SSLContext:
    _check_files(certfile, keyfile)
    ctx = ssl.SSLContext(purpose)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(certfile, keyfile)
        ctx.load_verify_locations(cafile=certfile)
    except (ssl.SSLError, OSError) as exc:
        raise TLSConfigError(
            f"cannot use certfile {certfile!r}"
            f"{f' with keyfile {keyfile!r}' if keyfile else ''}: {exc}"
        ) from None
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def server_context(certfile: str, keyfile: str | None = None) -> ssl.SSLContext:
    """Context for the side that accepts connections."""
    return _context(ssl.PROTOCOL_TLS_SERVER, certfile, keyfile)


def client_context(certfile: str, keyfile: str | None = None) -> ssl.SSLContext:
    """Context for the side that opens connections."""
    return _context(ssl.PROTOCOL_TLS_CLIENT, certfile, keyfile)


class TLSConfig:
    """Both contexts for one certificate, or none when TLS is off."""

    def __init__(self, certfile: str | None, keyfile: str | None = None) -> None:
        if certfile is None and keyfile is not None:
            raise TLSConfigError("keyfile given without certfile")
        self.certfile = certfile
        self.keyfile = keyfile
        self.server: ssl.SSLContext | None = None
        self.client: ssl.SSLContext | None = None
        if certfile is not None:
            self.server = server_context(certfile, keyfile)
            self.client = client_context(certfile, keyfile)

    @property
    def enabled(self) -> bool:
        return self.server is not None
