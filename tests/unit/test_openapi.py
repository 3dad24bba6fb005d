"""The OpenAPI document (src/tollgate/data/openapi.json) against the app and the README."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from openapi_spec_validator import validate
from starlette.routing import Route

from tollgate import errors
from tollgate.app import OPENAPI_DOCUMENT, create_app
from tollgate.dependencies import Dependencies
from tollgate.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
ERROR_SCHEMAS = {"#/components/schemas/Error", "#/components/schemas/OpenAIError"}


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(OPENAPI_DOCUMENT.read_text())
    return loaded


def resolve(document: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        target: Any = document
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def operations(document: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (path, method): operation
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in HTTP_METHODS
    }


def app_routes() -> set[tuple[str, str]]:
    settings = Settings(usage_table="usage", conversations_table="conversations", jwt_secret="x")
    # The route table is built without starting the app: the dependencies are never touched.
    app = create_app(settings, dependencies=Dependencies(service=None, authenticator=None))  # type: ignore[arg-type]
    routes = set()
    for route in app.routes:
        assert isinstance(route, Route)
        for method in route.methods or ():
            if method != "HEAD":  # Starlette answers HEAD for every GET route by itself
                routes.add((route.path, method.lower()))
    return routes


def readme_refusals() -> list[tuple[str, str]]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Refusals before streaming", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (\d{3}) \| `([a-z_]+)` \|", section, flags=re.MULTILINE)
    assert len(rows) >= 10, "the README's refusal table was not found"
    return rows


def example_codes(document: dict[str, Any], response: dict[str, Any]) -> set[str]:
    codes = set()
    for media in resolve(document, response).get("content", {}).values():
        for example in media.get("examples", {}).values():
            codes.add(resolve(document, example)["value"]["error"]["code"])
    return codes


def test_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    # Given the shipped document
    # When validating it against the OpenAPI specification
    validate(document)  # raises on any violation
    # Then it is OpenAPI 3.1 and the app serves this very file
    assert document["openapi"].startswith("3.1.")
    assert OPENAPI_DOCUMENT.parent.name == "data"


def test_paths_and_methods_equal_the_app_routes(document: dict[str, Any]) -> None:
    # Given the app's route table and the document's operations
    documented = set(operations(document))
    # Then each route is documented and nothing else is
    assert documented == app_routes()


def test_bearer_jwt_scheme_guards_every_endpoint_but_the_public_ones(
    document: dict[str, Any],
) -> None:
    # Given the security scheme
    scheme = document["components"]["securitySchemes"]["bearerAuth"]
    assert (scheme["type"], scheme["scheme"], scheme["bearerFormat"]) == ("http", "bearer", "JWT")
    assert document["security"] == [{"bearerAuth": []}]
    # Then exactly the page, the health check and this document are public,
    # and every guarded operation documents its 401
    public = {("/", "get"), ("/health", "get"), ("/openapi.json", "get")}
    for key, operation in operations(document).items():
        if key in public:
            assert operation["security"] == [], key
        else:
            assert operation.get("security", document["security"]) == [{"bearerAuth": []}], key
            assert "401" in operation["responses"], key


def test_every_readme_refusal_is_documented_with_its_status(document: dict[str, Any]) -> None:
    # Given the refusal table of the README
    documented: set[tuple[str, str]] = set()
    for operation in operations(document).values():
        for status, response in operation["responses"].items():
            documented |= {(status, code) for code in example_codes(document, response)}
    # Then every (status, code) pair of it appears in the document
    missing = [row for row in readme_refusals() if row not in documented]
    assert not missing, f"README refusals missing from the OpenAPI document: {missing}"


def test_every_error_code_the_code_raises_is_documented(document: dict[str, Any]) -> None:
    # Given the codes of the domain errors the gateway raises
    raised = {
        (str(cls.status), cls.code)
        for cls in vars(errors).values()
        if isinstance(cls, type)
        and issubclass(cls, errors.GatewayError)
        # a base raised only as its subclasses
        and cls not in (errors.GatewayError, errors.UpstreamError)
    }
    documented: set[tuple[str, str]] = set()
    for operation in operations(document).values():
        for status, response in operation["responses"].items():
            documented |= {(status, code) for code in example_codes(document, response)}
    # Then each is documented with its status
    assert raised <= documented, raised - documented


def test_error_responses_use_the_error_schemas(document: dict[str, Any]) -> None:
    # Then every 4xx/5xx is JSON in the gateway's error shape (OpenAI's under /v1)
    for (path, method), operation in operations(document).items():
        for status, response in operation["responses"].items():
            if int(status) < 400:
                continue
            content = resolve(document, response)["content"]
            assert set(content) == {"application/json"}, (path, method, status)
            schema = content["application/json"]["schema"]["$ref"]
            expected = (
                "#/components/schemas/OpenAIError"
                if path.startswith("/v1/")
                else "#/components/schemas/Error"
            )
            assert schema == expected, (path, method, status)
    error = document["components"]["schemas"]["Error"]["properties"]["error"]
    assert set(error["required"]) == {"code", "message"}
    openai = document["components"]["schemas"]["OpenAIError"]["properties"]["error"]
    assert set(openai["required"]) == {"message", "type", "code", "param"}


def test_retry_headers_are_documented(document: dict[str, Any]) -> None:
    # Then every 429 carries Retry-After and x-should-retry, every 503 Retry-After
    for key, operation in operations(document).items():
        for status, response in operation["responses"].items():
            headers = set(resolve(document, response).get("headers", {}))
            if status == "429":
                assert {"Retry-After", "x-should-retry"} <= headers, key
            if status == "503":
                assert "Retry-After" in headers, key
    should_retry = document["components"]["headers"]["x-should-retry"]["schema"]
    assert should_retry["enum"] == ["false"]


def test_streaming_responses_are_event_streams_with_the_request_id(
    document: dict[str, Any],
) -> None:
    paths = document["paths"]
    chat = paths["/chat"]["post"]["responses"]["200"]
    completions = paths["/v1/chat/completions"]["post"]["responses"]["200"]
    # Then /chat streams SSE only, /v1 either JSON or SSE, both with X-Request-Id
    assert set(chat["content"]) == {"text/event-stream"}
    assert set(completions["content"]) == {"application/json", "text/event-stream"}
    for response in (chat, completions):
        assert "X-Request-Id" in response["headers"]
    # And the /chat body lets the client send no role, system prompt or history
    body = resolve(document, paths["/chat"]["post"]["requestBody"]["content"]["application/json"])
    assert set(resolve(document, body["schema"])["properties"]) == {
        "message",
        "conversation_id",
        "prompt",
        "max_tokens",
    }
