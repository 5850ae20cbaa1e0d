"""A minimal ETSI GS QKD 014 SAE client (httpx, mutual TLS, keep-alive)."""

from __future__ import annotations

import base64
import ssl
from typing import Any

import httpx


class KmeError(RuntimeError):
    """The KME refused a request: HTTP status and the spec's error body."""

    def __init__(self, status: int, message: str, details: Any):
        super().__init__(f"KME answered {status}: {message} {details or ''}".strip())
        self.status = status
        self.message = message
        self.details = details


def sae_ssl_context(ca: str, cert: str | None = None, key: str | None = None) -> ssl.SSLContext:
    """TLS context trusting the KME's CA and presenting the SAE certificate (if given)."""
    ctx = ssl.create_default_context(cafile=ca)
    if cert:
        ctx.load_cert_chain(cert, key)
    return ctx


class SaeClient:
    """An SAE talking to its KME at ``base_url`` (``https://127.0.0.1:PORT``).

    Methods return decoded keys as ``[(key_ID, bytes)]``; a refusal raises
    :class:`KmeError` carrying ``message`` and ``details`` from the spec's error body.
    """

    def __init__(
        self,
        base_url: str,
        ca: str,
        cert: str | None,
        key: str | None,
        sae_id: str = "",
        timeout: float = 10.0,
    ):
        self.sae_id = sae_id
        self.http = httpx.Client(
            base_url=base_url, verify=sae_ssl_context(ca, cert, key), timeout=timeout
        )

    def _check(self, r: httpx.Response) -> Any:
        if r.status_code == 200:
            return r.json()
        try:
            body = r.json()
            msg, det = body.get("message", ""), body.get("details")
        except ValueError:
            msg, det = r.text, None
        raise KmeError(r.status_code, msg, det)

    @staticmethod
    def _keys(body: dict[str, Any]) -> list[tuple[str, bytes]]:
        return [(k["key_ID"], base64.b64decode(k["key"])) for k in body["keys"]]

    def status(self, peer: str) -> dict[str, Any]:
        """``GET /api/v1/keys/{peer}/status``."""
        return self._check(self.http.get(f"/api/v1/keys/{peer}/status"))

    def enc_keys(
        self, slave_id: str, number: int = 1, size: int | None = None
    ) -> list[tuple[str, bytes]]:
        """Master SAE: ``POST /api/v1/keys/{slave_id}/enc_keys``."""
        body: dict[str, Any] = {"number": number}
        if size is not None:
            body["size"] = size
        return self._keys(
            self._check(self.http.post(f"/api/v1/keys/{slave_id}/enc_keys", json=body))
        )

    def dec_keys(self, master_id: str, key_ids: list[str]) -> list[tuple[str, bytes]]:
        """Slave SAE: ``POST /api/v1/keys/{master_id}/dec_keys`` (path = the MASTER's ID)."""
        body = {"key_IDs": [{"key_ID": k} for k in key_ids]}
        return self._keys(
            self._check(self.http.post(f"/api/v1/keys/{master_id}/dec_keys", json=body))
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> SaeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
