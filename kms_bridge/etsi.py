"""ETSI GS QKD 014 v1 key delivery API (FastAPI), with the SAE taken from its TLS certificate.

Routes (the spec's paths): ``GET /api/v1/keys/{slave_SAE_ID}/status``,
``GET|POST /api/v1/keys/{slave_SAE_ID}/enc_keys`` (called by the master SAE) and
``GET|POST /api/v1/keys/{master_SAE_ID}/dec_keys`` (called by the slave SAE; the path
carries the *master's* ID). JSON field names are the spec's. Errors are the spec's
``{"message", "details"}`` with 400 (bad request), 401 (unauthorised: no client
certificate, or the policy does not allow this SAE pair) and 503 (server side, e.g. not
enough key material). Every request, delivery and refusal is in the audit log.

The caller's identity is the Common Name of its verified client certificate, which
:class:`TLSHttpProtocol` (a uvicorn HTTP protocol) puts into the ASGI scope as the
``tls`` extension, since uvicorn itself does not expose the peer certificate.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import uuid
from typing import Any, NoReturn

from cryptography import x509
from cryptography.x509.oid import NameOID
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from uvicorn.protocols.http.h11_impl import H11Protocol

from kms_bridge.config import KmeConfig
from kms_bridge.store import RefusedError, SqliteKeyStore

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _BaseProtocol
except ImportError:  # pragma: no cover - httptools missing
    _BaseProtocol = H11Protocol  # type: ignore[misc,assignment]


# ------------------------------------------------------------------ spec data formats
class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _RequestModel(BaseModel):
    """Request bodies ignore members the spec does not define (a vendor client's extra
    fields change nothing); the spec's own members are type-checked."""

    model_config = ConfigDict(extra="ignore")


class Status(_Model):
    """Status data format (spec 6.1)."""

    source_KME_ID: str  # noqa: N815
    target_KME_ID: str  # noqa: N815
    master_SAE_ID: str  # noqa: N815
    slave_SAE_ID: str  # noqa: N815
    key_size: int
    stored_key_count: int
    max_key_count: int
    max_key_per_request: int
    max_key_size: int
    min_key_size: int
    max_SAE_ID_count: int  # noqa: N815
    status_extension: dict[str, Any] | None = None


class KeyRequest(_RequestModel):
    """Key request data format (spec 6.2): body of POST enc_keys."""

    number: int | None = Field(default=None, ge=1)
    size: int | None = Field(default=None, ge=1)
    additional_slave_SAE_IDs: list[str] | None = None  # noqa: N815
    extension_mandatory: list[dict[str, Any]] | None = None
    extension_optional: list[dict[str, Any]] | None = None


class Key(_Model):
    key_ID: str  # noqa: N815
    key_ID_extension: dict[str, Any] | None = None  # noqa: N815
    key: str
    key_extension: dict[str, Any] | None = None


class KeyContainer(_Model):
    """Key container data format (spec 6.3): the answer of enc_keys and dec_keys."""

    keys: list[Key]
    key_container_extension: dict[str, Any] | None = None


class KeyIDItem(_RequestModel):
    key_ID: str  # noqa: N815
    key_ID_extension: dict[str, Any] | None = None  # noqa: N815


class KeyIDs(_RequestModel):
    """Key IDs data format (spec 6.4): body of POST dec_keys."""

    key_IDs: list[KeyIDItem]  # noqa: N815
    key_IDs_extension: dict[str, Any] | None = None  # noqa: N815


class Error(_Model):
    """Error data format (spec 6.5)."""

    message: str
    details: list[dict[str, Any]] | None = None


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Error, "description": "Bad request format"},
    401: {"model": Error, "description": "Unauthorized"},
    503: {"model": Error, "description": "Error on server side"},
}


# ------------------------------------------------------------------ TLS identity
def _cn_of(der: bytes | None) -> str | None:
    if not der:
        return None
    cert = x509.load_der_x509_certificate(der)
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(cns[0].value) if cns else None


def _peer_tls(transport: asyncio.BaseTransport) -> dict[str, Any]:
    """TLS facts of one connection: the verified client certificate (PEM, CN) and version."""
    tls: dict[str, Any] = {"client_cert_chain": [], "client_cert_name": None}
    obj = transport.get_extra_info("ssl_object")
    if obj is not None:
        der = obj.getpeercert(binary_form=True)
        if der:
            tls["client_cert_chain"] = [ssl.DER_cert_to_PEM_cert(der)]
            tls["client_cert_name"] = _cn_of(der)
        tls["tls_version"] = obj.version()
    return tls


def tls_protocol_class(base: type) -> type:
    """A uvicorn HTTP protocol (h11 or httptools) adding ``scope["extensions"]["tls"]``.

    The handshake has already verified the chain against the KME's CA (uvicorn's
    ``ssl_ca_certs``), so a certificate seen here is a valid one. The facts are read once
    per connection and put into every request's scope by wrapping the connection's ASGI
    app, which both uvicorn implementations call through ``self.app``.
    """

    class _TLSProtocol(base):  # type: ignore[misc,valid-type]
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            tls = _peer_tls(transport)
            inner = self.app

            async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
                scope.setdefault("extensions", {})["tls"] = tls
                await inner(scope, receive, send)

            self.app = app

    _TLSProtocol.__name__ = _TLSProtocol.__qualname__ = f"TLS{base.__name__}"
    return _TLSProtocol


TLSHttpProtocol = tls_protocol_class(_BaseProtocol)
"""The protocol the KME serves with: httptools when installed, h11 otherwise."""


def caller_identity(request: Request) -> str | None:
    """SAE ID of the caller: the CN of its verified client certificate, or None."""
    tls = request.scope.get("extensions", {}).get("tls") or {}
    return tls.get("client_cert_name")


# ------------------------------------------------------------------ application
class _RefusalError(Exception):
    def __init__(self, status: int, message: str, details: list[dict[str, Any]] | None = None):
        super().__init__(message)
        self.status, self.message, self.details = status, message, details or []


def _error(status: int, message: str, details: list[dict[str, Any]] | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"message": message, "details": details or []})


def create_app(cfg: KmeConfig, store: SqliteKeyStore) -> FastAPI:
    """The ETSI GS QKD 014 v1 application of one KME."""
    app = FastAPI(
        title=f"ETSI GS QKD 014 key delivery ({cfg.kme_id})",
        version="1.1.1",
        description="REST-based key delivery API, ETSI GS QKD 014 V1.1.1.",
    )

    async def audit_refusal(request: Request, who: str, peer: str, ref: _RefusalError) -> None:
        detail = {
            "path": request.url.path,
            "method": request.method,
            "status": ref.status,
            "reason": ref.message,
            "client": f"{request.client.host}:{request.client.port}" if request.client else "",
        }
        await asyncio.wrap_future(store.audit_event("refusal", who, peer, [], detail))

    @app.exception_handler(_RefusalError)
    async def _on_refusal(request: Request, exc: _RefusalError) -> JSONResponse:
        return _error(exc.status, exc.message, exc.details)

    @app.exception_handler(RequestValidationError)
    async def _on_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = [
            {"field": ".".join(str(p) for p in e.get("loc", ())), "error": e.get("msg", "")}
            for e in exc.errors()
        ]
        who = caller_identity(request) or ""
        ref = _RefusalError(400, "bad request format", details)
        await audit_refusal(request, who, next(iter(request.path_params.values()), ""), ref)
        return _error(400, ref.message, details)

    @app.exception_handler(StarletteHTTPException)
    async def _on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    async def authorise(request: Request, peer: str, role: str | None) -> tuple[str, Any]:
        who = caller_identity(request)
        if not who:
            ref = _RefusalError(
                401,
                "unauthorized: a client certificate issued by the KME's CA is required",
                [{"reason": "no client certificate"}],
            )
            await audit_refusal(request, "", peer, ref)
            raise ref
        rule = cfg.rule(who, peer, role)
        if rule is None:
            what = {"master": "enc_keys", "slave": "dec_keys"}.get(role or "", "status")
            ref = _RefusalError(
                401,
                f"unauthorized: SAE {who} may not request {what} for SAE {peer}",
                [{"SAE_ID": who, "peer_SAE_ID": peer, "reason": "not allowed by policy"}],
            )
            await audit_refusal(request, who, peer, ref)
            raise ref
        return who, rule

    async def refuse(
        request: Request,
        who: str,
        peer: str,
        status: int,
        msg: str,
        details: list[dict[str, Any]] | None = None,
    ) -> NoReturn:
        """Audit a refusal, then answer it with the spec's error body."""
        ref = _RefusalError(status, msg, details)
        await audit_refusal(request, who, peer, ref)
        raise ref

    def link_size(rule: Any) -> int:
        return cfg.links[rule.link].key_size

    async def deliver(fut: Any) -> Response:
        try:
            res = await asyncio.wrap_future(fut)
        except Exception as exc:
            raise _RefusalError(503, f"key store error: {exc}") from None
        if isinstance(res, RefusedError):
            raise _RefusalError(res.status, res.message, res.details)
        # Serialised here (the Key container layout, spec 6.3) rather than through the
        # response model: FastAPI's re-validation costs more than the whole key delivery.
        body = {"keys": [{"key_ID": k, "key": base64.b64encode(v).decode()} for k, v in res]}
        return Response(json.dumps(body, separators=(",", ":")), media_type="application/json")

    @app.get(
        "/api/v1/keys/{slave_SAE_ID}/status",
        response_model=Status,
        response_model_exclude_none=True,
        responses=ERRORS,
        summary="Get status",
    )
    async def get_status(request: Request, slave_SAE_ID: str) -> Status:
        who, rule = await authorise(request, slave_SAE_ID, None)
        link = cfg.links[rule.link]
        counts = await asyncio.wrap_future(store.counts(rule.link))
        await asyncio.wrap_future(
            store.audit_event("request", who, slave_SAE_ID, [], {"path": request.url.path})
        )
        master, slave = (who, slave_SAE_ID) if rule.role == "master" else (slave_SAE_ID, who)
        return Status(
            source_KME_ID=cfg.kme_id,
            target_KME_ID=link.peer_kme,
            master_SAE_ID=master,
            slave_SAE_ID=slave,
            key_size=link.key_size,
            stored_key_count=counts.stored_key_count,
            max_key_count=counts.max_key_count,
            max_key_per_request=cfg.max_key_per_request,
            max_key_size=link.key_size,
            min_key_size=link.key_size,
            max_SAE_ID_count=0,
        )

    async def enc_keys(request: Request, slave: str, req: KeyRequest) -> Response:
        who, rule = await authorise(request, slave, "master")
        size = req.size if req.size is not None else link_size(rule)
        number = req.number if req.number is not None else 1
        if req.additional_slave_SAE_IDs:
            await refuse(
                request,
                who,
                slave,
                400,
                "additional_slave_SAE_IDs not supported (max_SAE_ID_count is 0)",
                [{"additional_slave_SAE_IDs": req.additional_slave_SAE_IDs}],
            )
        if req.extension_mandatory:
            await refuse(
                request,
                who,
                slave,
                400,
                "not all extension_mandatory parameters are supported",
                [{"extension_mandatory_unsupported": req.extension_mandatory}],
            )
        if size != link_size(rule):
            await refuse(
                request,
                who,
                slave,
                400,
                f"requested size {size} is not supported",
                [{"min_key_size": link_size(rule), "max_key_size": link_size(rule)}],
            )
        if number > cfg.max_key_per_request:
            await refuse(
                request,
                who,
                slave,
                400,
                f"requested number {number} exceeds max_key_per_request",
                [{"max_key_per_request": cfg.max_key_per_request}],
            )
        meta = {"path": request.url.path, "method": request.method, "number": number, "size": size}
        return await deliver(store.take_new(rule.link, number, size, who, slave, meta))

    async def dec_keys(request: Request, master: str, key_ids: list[str]) -> Response:
        who, rule = await authorise(request, master, "slave")
        bad = []
        for k in key_ids:
            try:
                uuid.UUID(k)
            except ValueError:
                bad.append({"key_ID": k, "reason": "not a UUID"})
        if not key_ids or bad or len(set(key_ids)) != len(key_ids):
            await refuse(
                request, who, master, 400, "key_IDs must be distinct UUIDs", bad or [{"n": 0}]
            )
        if len(key_ids) > cfg.max_key_per_request:
            await refuse(
                request,
                who,
                master,
                400,
                "number of key_IDs exceeds max_key_per_request",
                [{"max_key_per_request": cfg.max_key_per_request}],
            )
        canon = [str(uuid.UUID(k)) for k in key_ids]
        meta = {"path": request.url.path, "method": request.method}
        return await deliver(store.take_ids(rule.link, canon, who, master, meta))

    common: dict[str, Any] = {
        "response_model": KeyContainer,
        "response_model_exclude_none": True,
        "responses": ERRORS,
    }

    @app.get("/api/v1/keys/{slave_SAE_ID}/enc_keys", summary="Get key", **common)
    async def get_enc_keys(
        request: Request,
        slave_SAE_ID: str,
        number: int | None = Query(default=None, ge=1),
        size: int | None = Query(default=None, ge=1),
    ) -> Response:
        return await enc_keys(request, slave_SAE_ID, KeyRequest(number=number, size=size))

    @app.post("/api/v1/keys/{slave_SAE_ID}/enc_keys", summary="Get key", **common)
    async def post_enc_keys(
        request: Request,
        slave_SAE_ID: str,
        body: KeyRequest,
    ) -> Response:
        return await enc_keys(request, slave_SAE_ID, body)

    @app.get("/api/v1/keys/{master_SAE_ID}/dec_keys", summary="Get key with key IDs", **common)
    async def get_dec_keys(
        request: Request,
        master_SAE_ID: str,
        key_ID: list[str] = Query(...),  # noqa: B008
    ) -> Response:
        return await dec_keys(request, master_SAE_ID, key_ID)

    @app.post("/api/v1/keys/{master_SAE_ID}/dec_keys", summary="Get key with key IDs", **common)
    async def post_dec_keys(
        request: Request,
        master_SAE_ID: str,
        body: KeyIDs,
    ) -> Response:
        return await dec_keys(request, master_SAE_ID, [k.key_ID for k in body.key_IDs])

    def openapi() -> dict[str, Any]:
        """FastAPI's schema with its 422 answers replaced by the spec's 400 (what we send)."""
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            schema = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            for item in schema.get("paths", {}).values():
                for op in item.values():
                    op.get("responses", {}).pop("422", None)
            comps = schema.get("components", {}).get("schemas", {})
            comps.pop("HTTPValidationError", None)
            comps.pop("ValidationError", None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
