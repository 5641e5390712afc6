"""/openapi.json: a valid OpenAPI 3.1 document that describes every route."""

from __future__ import annotations

from typing import Any

import pytest
from openapi_spec_validator import validate
from starlette.routing import Route

from outbox.api.app import create_app
from outbox.api.config import Settings
from outbox.api.openapi import build


@pytest.fixture(scope="module")
def app_and_doc() -> tuple[Any, dict[str, Any]]:
    app = create_app(Settings.load(database_url="", api_token="t"))
    return app, build(app.routes)


def test_the_document_is_valid_openapi_3_1(app_and_doc: tuple[Any, dict[str, Any]]) -> None:
    _, doc = app_and_doc
    assert doc["openapi"].startswith("3.1")
    validate(doc)


def test_every_http_route_is_described(app_and_doc: tuple[Any, dict[str, Any]]) -> None:
    app, doc = app_and_doc
    routes = {
        (method.lower(), route.path)
        for route in app.routes
        if isinstance(route, Route)
        for method in (route.methods or set()) - {"HEAD"}
    }
    described = {(m, p) for p, item in doc["paths"].items() for m in item}
    assert routes <= described, routes - described
    for path in ("/webhooks", "/webhooks/{webhook_id}", "/events", "/event-types", "/metrics"):
        assert path in doc["paths"]


def test_operations_have_schemas_errors_and_security(
    app_and_doc: tuple[Any, dict[str, Any]],
) -> None:
    _, doc = app_and_doc
    public = {"/health", "/openapi.json", "/"}
    for path, item in doc["paths"].items():
        for method, op in item.items():
            where = f"{method.upper()} {path}"
            ok = [s for s in op["responses"] if s.startswith("2")]
            assert ok, where
            for status in ok:
                if status != "204":
                    assert op["responses"][status]["content"], where
            assert (op["security"] == []) is (path in public), where
            if path not in public:
                assert "401" in op["responses"] and "503" in op["responses"], where
            if "{" in path or op.get("parameters"):
                assert "422" in op["responses"], where
            if method in ("post", "patch") and "requestBody" in op:
                assert {"400", "413", "422"} <= op["responses"].keys(), where


def test_request_models_refuse_unknown_fields_and_secrets_stay_out_of_reads(
    app_and_doc: tuple[Any, dict[str, Any]],
) -> None:
    _, doc = app_and_doc
    schemas = doc["components"]["schemas"]
    for name in ("WebhookCreate", "WebhookUpdate", "RecoverRequest", "RotateRequest"):
        assert schemas[name]["additionalProperties"] is False, name
    assert "secret" not in schemas["WebhookOut"]["properties"]
    assert "secret" in schemas["WebhookWithSecret"]["properties"]
    create = doc["paths"]["/webhooks"]["post"]["responses"]["201"]
    assert create["content"]["application/json"]["schema"]["$ref"].endswith("WebhookWithSecret")
    get = doc["paths"]["/webhooks/{webhook_id}"]["get"]["responses"]["200"]
    assert get["content"]["application/json"]["schema"]["$ref"].endswith("/WebhookOut")
    limit = next(p for p in doc["paths"]["/webhooks"]["get"]["parameters"] if p["name"] == "limit")
    assert (limit["schema"]["minimum"], limit["schema"]["maximum"]) == (1, 200)
