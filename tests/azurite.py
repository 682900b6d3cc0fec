"""Azurite, the real Azure Storage emulator (npm `azurite`), run for tests on 127.0.0.1.

`.ci/run` installs it under `.ci/node`; `AZURITE_DIR` or the PATH may point elsewhere. Each service is a
separate Node process on a random port, started and stopped by its own process id.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.support import free_port

# Azurite's well-known development account (public, documented by Microsoft; not a secret).
ACCOUNT_NAME = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

_ROOT = Path(__file__).resolve().parent.parent
_ENDPOINT_NAMES = {"blob": "BlobEndpoint", "queue": "QueueEndpoint"}


def find_azurite(service: str = "blob") -> str | None:
    """The `azurite-<service>` executable: AZURITE_DIR, then .ci/node, then the PATH."""
    name = f"azurite-{service}"
    for folder in (os.environ.get("AZURITE_DIR"), _ROOT / ".ci" / "node" / "node_modules" / ".bin"):
        if folder and (Path(folder) / name).is_file():
            return str(Path(folder) / name)
    return shutil.which(name)


class Azurite:
    """One Azurite instance: a Node process per service (blob, and queue when asked), on fixed random
    ports so that `stop()` then `start()` brings the same endpoints back (empty: data lives in memory).

    `oauth=True` serves HTTPS with a self-signed certificate for 127.0.0.1 (`cert_path`) and accepts
    bearer tokens (Azurite's `--oauth basic`: it checks their issuer, audience and lifetime)."""

    def __init__(self, services: tuple[str, ...] = ("blob",), *, oauth: bool = False) -> None:
        self.services = services
        self.ports = {service: free_port() for service in services}
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._workdir = Path(tempfile.mkdtemp(prefix="azurite-"))
        self.cert_path: Path | None = None
        self._tls_args: list[str] = []
        if oauth:
            self.cert_path, key_path = _self_signed_certificate(self._workdir)
            self._tls_args = ["--oauth", "basic", "--cert", str(self.cert_path), "--key", str(key_path)]

    @property
    def scheme(self) -> str:
        return "https" if self.cert_path else "http"

    def endpoint(self, service: str = "blob") -> str:
        return f"{self.scheme}://127.0.0.1:{self.ports[service]}/{ACCOUNT_NAME}"

    @property
    def connection_string(self) -> str:
        endpoints = "".join(f"{_ENDPOINT_NAMES[s]}={self.endpoint(s)};" for s in self.services)
        account = f"AccountName={ACCOUNT_NAME};AccountKey={ACCOUNT_KEY}"
        return f"DefaultEndpointsProtocol={self.scheme};{account};{endpoints}"

    @property
    def running(self) -> bool:
        return bool(self._procs) and all(p.poll() is None for p in self._procs.values())

    def start(self, timeout: float = 30.0) -> None:
        for service, port in self.ports.items():
            executable = find_azurite(service)
            if executable is None:
                raise RuntimeError(
                    f"azurite-{service} not found: run scripts/test, which installs it "
                    "(npm install --prefix .ci/node azurite@3.37.0)"
                )
            log = (self._workdir / f"{service}.log").open("ab")
            self._procs[service] = subprocess.Popen(
                [
                    executable,
                    f"--{service}Host",
                    "127.0.0.1",
                    f"--{service}Port",
                    str(port),
                    "--inMemoryPersistence",
                    "--extentMemoryLimit",
                    "256",
                    # azure-storage-blob speaks a newer API version than Azurite knows.
                    "--skipApiVersionCheck",
                    "--disableTelemetry",
                    "--silent",
                    *self._tls_args,
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self._workdir,
            )
            log.close()
        try:
            for service, port in self.ports.items():
                self._wait_until_listening(service, port, timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_until_listening(self, service: str, port: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self._procs[service].poll() is not None:
                log = (self._workdir / f"{service}.log").read_text(errors="replace")
                raise RuntimeError(f"azurite-{service} exited with {self._procs[service].returncode}:\n{log}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"azurite-{service} did not listen on port {port} in {timeout} s"
                    ) from None
                time.sleep(0.05)

    def freeze(self) -> None:
        """SIGSTOP every service: connections are accepted by the kernel and then hang, as a hung
        account does (not refused, as a stopped one is)."""
        for proc in self._procs.values():
            proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT: the frozen services answer again, with what they held."""
        for proc in self._procs.values():
            proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """Stop every service by its process id (SIGTERM, then SIGKILL after 10 s)."""
        for proc in self._procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)  # a frozen process cannot act on SIGTERM
                proc.terminate()
        for proc in self._procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._procs.clear()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._workdir, ignore_errors=True)


def _self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1, valid for a day, and its key (PEM files in `folder`)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


@contextmanager
def running_azurite(services: tuple[str, ...] = ("blob",), *, oauth: bool = False) -> Iterator[Azurite]:
    azurite = Azurite(services, oauth=oauth)
    try:
        azurite.start()
        yield azurite
    finally:
        azurite.close()


def skip_without_azurite() -> None:
    """Skip where Azurite is not installed, except in CI, which installs it: there it must run."""
    if find_azurite() is None:
        if os.environ.get("CI"):
            pytest.fail("CI must run the Blob tests: Azurite is missing (see .ci/run)")
        pytest.skip("Azurite is not installed: scripts/test installs it (azurite@3.37.0 in .ci/node)")


def blob_settings(azurite: Azurite) -> dict[str, Any]:
    """Settings overrides for a store on this Azurite, in containers of its own."""
    tag = secrets.token_hex(4)
    return {
        "azure_storage_connection_string": azurite.connection_string,
        "blob_images_container": f"images-{tag}",
        "blob_styles_container": f"styles-{tag}",
    }
