"""The OpenAPI description: valid, complete (every route with each of its methods), public,
with the bearer schemes on the admin routes, and readable as a page."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from apispec_webframeworks.flask import FlaskPlugin
from flask import Flask
from markupsafe import escape
from openapi_spec_validator import validate

from service.extensions import db
from service.web import openapi

pytestmark = pytest.mark.integration

TOKEN = "admin-token-for-tests-0123456789"
UNDESCRIBED = ("/static", "/outbox")  # static files, and the outbox of the embedded mode only
NOT_OPERATIONS = {"HEAD", "OPTIONS"}
HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


def _described_app(stack, **overrides: str) -> Flask:
    described = stack.make_app(**overrides)
    if "openapi" not in described.blueprints:
        described.register_blueprint(openapi.bp)
    return described


@pytest.fixture
def api_app(stack) -> Iterator[Flask]:
    """An app with the admin API open and, since no SMTP_HOST, the embedded outbox too."""
    described = _described_app(stack, ADMIN_API_TOKEN=TOKEN, SMTP_HOST="")
    yield described
    with described.app_context():
        db.engine.dispose()


@pytest.fixture
def spec(api_app) -> dict[str, Any]:
    response = api_app.test_client().get("/api/v1/openapi.json")
    assert response.status_code == 200
    return response.json


def routes_without_description(app: Flask, spec: dict[str, Any]) -> set[tuple[str, str]]:
    """(method, path) of every route of ``app`` that ``spec`` does not describe."""
    routes = {(method, FlaskPlugin.flaskpath2openapi(rule.rule))
              for rule in app.url_map.iter_rules() if not rule.rule.startswith(UNDESCRIBED)
              for method in (rule.methods or set()) - NOT_OPERATIONS}
    described = {(method.upper(), path) for path, item in spec["paths"].items()
                 for method in item if method in HTTP_METHODS}
    return routes - described


def operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method in HTTP_METHODS:
                yield method.upper(), path, operation


def test_the_description_is_valid_openapi(spec):
    validate(spec)
    assert spec["openapi"].startswith("3.")


def test_every_route_is_described_with_each_of_its_methods(api_app, spec):
    assert routes_without_description(api_app, spec) == set()
    assert any(rule.rule.startswith("/outbox") for rule in api_app.url_map.iter_rules())
    assert not [path for path in spec["paths"] if path.startswith(UNDESCRIBED)]
    for method, path, operation in operations(spec):
        assert operation.get("summary"), f"{method} {path} has no summary"
        assert operation["responses"], f"{method} {path} has no responses"


def test_a_route_without_a_description_is_found(stack):
    app = _described_app(stack, ADMIN_API_TOKEN=TOKEN)
    app.add_url_rule("/api/v1/undescribed", view_func=lambda: "", methods=["GET", "PUT"])
    with app.app_context():
        spec = openapi.build_spec(app)
        db.engine.dispose()
    assert routes_without_description(app, spec) == {("GET", "/api/v1/undescribed"),
                                                     ("PUT", "/api/v1/undescribed")}


def test_the_admin_routes_want_the_bearer_token_and_the_public_ones_do_not(spec):
    schemes = spec["components"]["securitySchemes"]
    assert schemes["adminToken"] == {**schemes["adminToken"], "type": "http", "scheme": "bearer"}
    for method, path, operation in operations(spec):
        protected = path.startswith(("/api/v1/", "/admin/")) or path == "/metrics"
        public = not protected or path in ("/api/v1/openapi.json", "/api/v1/docs")
        if public:
            assert not operation.get("security"), f"{method} {path}"
        else:
            assert {"adminToken": []} in operation["security"], f"{method} {path}"
            assert "401" in operation["responses"], f"{method} {path}"


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-token"}], ids=["none", "wrong"])
def test_the_description_needs_no_token(stack, headers):
    for overrides in ({"ADMIN_API_TOKEN": TOKEN}, {}):  # the admin API open, and closed
        app = _described_app(stack, **overrides)
        client = app.test_client()
        assert client.get("/api/v1/topics", headers=headers).status_code == 401
        response = client.get("/api/v1/openapi.json", headers=headers)
        assert response.status_code == 200
        assert response.json["paths"]
        assert client.get("/api/v1/docs", headers=headers).status_code == 200
        with app.app_context():
            db.engine.dispose()


def test_the_docs_page_lists_every_operation(api_app, spec):
    response = api_app.test_client().get("/api/v1/docs")
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    page = response.get_data(as_text=True)
    for method, path, operation in operations(spec):
        assert f'<span class="method">{method}</span> <code>{path}</code>' in page
        assert escape(operation["summary"]) in page
    for name in spec["components"]["schemas"]:
        assert f'id="schema-{name}"' in page
    assert 'href="/api/v1/openapi.json"' in page


def test_the_docs_page_keeps_to_the_content_security_policy(api_app):
    response = api_app.test_client().get("/api/v1/docs")
    policy = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    page = response.get_data(as_text=True).lower()
    assert "<script" not in page and "style=" not in page and "<style" not in page
    assert 'rel="stylesheet" href="/static/' in page
    # Every link and resource is ours: a path on this server, or a place on the page.
    assert {link[0] for link in re.findall(r'(?:href|src)="([^"]*)"', page)} <= {"/", "#"}
