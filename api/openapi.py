"""``GET /openapi.json``: the API described from the models it validates with.

Every REST handler carries a :class:`api.endpoint.Doc`; this module walks
the app's routes and turns each Doc into an OpenAPI 3.1 operation (3.1
because pydantic emits JSON Schema 2020-12). Routes of other modules that
have no Doc (``/health``, the admin page) are described from a small table
here. The document is built once per app and kept on ``app.state``.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from outbox.api.endpoint import MAX_ID, Doc
from outbox.api.schemas import ErrorOut

_PARAM_RE = re.compile(r"{(\w+)(?::\w+)?}")
_REF = "#/components/schemas/{model}"
_ANY_OBJECT: dict[str, Any] = {"type": "object", "additionalProperties": True}

# Routes other modules own, described here because they carry no Doc.
_FOREIGN: dict[str, dict[str, Any]] = {
    "/health": {
        "summary": "Health of the relay (no auth)",
        "responses": {
            "200": {
                "description": "healthy",
                "content": {"application/json": {"schema": _ANY_OBJECT}},
            },
            "503": {
                "description": "degraded: e.g. the database is unreachable",
                "content": {"application/json": {"schema": _ANY_OBJECT}},
            },
        },
    },
    "/": {
        "summary": "The admin live feed page (no auth; the page asks for a token)",
        "responses": {
            "200": {"description": "HTML", "content": {"text/html": {"schema": {"type": "string"}}}}
        },
    },
}

_INFO = {
    "title": "outbox-relay",
    "version": "1",
    "description": "Subscriptions (webhooks), deliveries, replay and metrics of an "
    "outbox-relay server. Authenticate with `Authorization: Bearer TOKEN` or "
    '`X-API-Key: TOKEN`. Errors are JSON `{"detail": "..."}`; validation '
    "errors (422) name the field. The live feed is the WebSocket `/ws` "
    "(not described here).",
}


class _Builder:
    def __init__(self) -> None:
        self.components: dict[str, Any] = {"ErrorOut": None}

    def ref(self, model: type[BaseModel], mode: str) -> dict[str, Any]:
        name = model.__name__
        if name not in self.components or self.components[name] is None:
            schema = model.model_json_schema(ref_template=_REF, mode=mode)  # type: ignore[arg-type]
            self.components.update(schema.pop("$defs", {}))
            self.components[name] = schema
        return {"$ref": _REF.format(model=name)}

    def error(self, description: str) -> dict[str, Any]:
        schema = self.ref(ErrorOut, "serialization")
        return {"description": description, "content": {"application/json": {"schema": schema}}}

    def operation(self, path: str, doc: Doc) -> dict[str, Any]:
        op: dict[str, Any] = {"summary": doc.summary}
        if doc.description:
            op["description"] = doc.description
        params = [
            {
                "name": name,
                "in": "path",
                "required": True,
                "schema": {"type": "integer", "minimum": 1, "maximum": MAX_ID},
            }
            for name in _PARAM_RE.findall(path)
        ]
        if doc.query is not None:
            params += _query_params(doc.query)
        if params:
            op["parameters"] = params
        if doc.body is not None:
            op["requestBody"] = {
                "required": doc.body_required,
                "content": {"application/json": {"schema": self.ref(doc.body, "validation")}},
            }
        op["responses"] = self.responses(doc, has_input=bool(params) or doc.body is not None)
        op["security"] = [{"bearer": []}, {"apiKey": []}] if doc.auth else []
        return op

    def responses(self, doc: Doc, *, has_input: bool) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for status, model in doc.responses.items():
            entry: dict[str, Any] = {"description": "OK" if status < 300 else str(status)}
            if isinstance(model, str):
                entry["content"] = {model.split(";")[0]: {"schema": {"type": "string"}}}
            elif model is not None:
                entry["content"] = {
                    "application/json": {"schema": self.ref(model, "serialization")}
                }
            out[str(status)] = entry
        # The HTTP server itself refuses malformed requests (e.g. a request
        # line over its size limit) with a plain-text 400 before the app runs.
        bad = self.error(
            "the body is not valid JSON, or the HTTP server refused a malformed request"
            if doc.body is not None
            else "the HTTP server refused a malformed request (e.g. a URL too long)"
        )
        bad["content"]["text/plain"] = {"schema": {"type": "string"}}
        out["400"] = bad
        if doc.body is not None:
            out["413"] = self.error("the body is larger than OUTBOX_MAX_REQUEST_BODY")
        if doc.auth:
            out["401"] = self.error("Missing API key / Invalid or expired API key")
            out["403"] = self.error(
                "the token's scope does not allow this operation; the detail names the"
                " scope it needs (admin: everything; read: every GET, /ws, /events;"
                " feed: /ws and /events only)"
            )
        out["431"] = self.error("the request head is larger than OUTBOX_MAX_HEADER_BYTES")
        for status, why in doc.errors.items():
            out[str(status)] = self.error(why)
        if has_input:
            out["422"] = self.error("invalid input: the detail names the field and why")
        out["503"] = self.error("the database is unavailable")
        return dict(sorted(out.items()))


def _query_params(model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = model.model_json_schema(ref_template=_REF, mode="validation")
    required = set(schema.get("required", ()))
    params = []
    for name, prop in schema["properties"].items():
        # An absent query parameter is the "null" of a query string.
        options = [o for o in prop.pop("anyOf", []) if o.get("type") != "null"]
        if len(options) == 1:
            prop.update(options[0])
        if prop.get("default", 0) is None:
            del prop["default"]
        prop.pop("title", None)
        params.append({"name": name, "in": "query", "required": name in required, "schema": prop})
    return params


def build(routes: list[BaseRoute]) -> dict[str, Any]:
    b = _Builder()
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        if not isinstance(route, Route):
            continue
        doc: Doc | None = getattr(route.endpoint, "openapi_doc", None)
        if doc is not None:
            for method in sorted((route.methods or set()) - {"HEAD"}):
                paths.setdefault(route.path, {})[method.lower()] = b.operation(route.path, doc)
        elif route.path in _FOREIGN:
            paths.setdefault(route.path, {})["get"] = {**_FOREIGN[route.path], "security": []}
    paths["/openapi.json"] = {
        "get": {
            "summary": "This document (no auth)",
            "security": [],
            "responses": {
                "200": {
                    "description": "OK",
                    "content": {"application/json": {"schema": _ANY_OBJECT}},
                }
            },
        }
    }
    return {
        "openapi": "3.1.0",
        "info": _INFO,
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": dict(sorted(b.components.items())),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
        },
    }


def document(app: Starlette) -> dict[str, Any]:
    cached: dict[str, Any] | None = getattr(app.state, "openapi", None)
    if cached is None:
        cached = app.state.openapi = build(app.routes)
    return cached


async def openapi_json(request: Request) -> Response:
    return JSONResponse(document(request.app))


routes: list[BaseRoute] = [Route("/openapi.json", openapi_json, methods=["GET"])]
