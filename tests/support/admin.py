"""
The admin API's clients for the tests: `Admin`, a blocking client whose
every answer is validated against ``docs/admin-openapi.yaml`` with
openapi-core, the problem answers it expects, and the admin tokens.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import requests
import yaml
from openapi_core import Config, OpenAPI
from openapi_core.contrib.requests import RequestsOpenAPIRequest, RequestsOpenAPIResponse

from . import TIMEOUT, LiveServer

TOKEN = "k7-Qx.~+/s3cret=="
ROOT = Path(__file__).resolve().parents[2]
# openapi-core reads JSON bodies itself; the description is served as YAML.
SPEC = OpenAPI.from_file_path(
    str(ROOT / "docs" / "admin-openapi.yaml"),
    config=Config(extra_media_type_deserializers={"application/yaml": yaml.safe_load}),
)
DEFAULT = object()
"""An argument left out (where None means something)."""

FILE_TOKEN = "9f2c41d7e0b8a6f3c5d2e1f0a9b8c7d6"
"""The token in conftest's ``token_file``, for ``twistd --admin-token-file``."""


class Admin:
    """
    A blocking admin client: every answer to a path of the API is validated
    against the OpenAPI description.
    """

    def __init__(self, server: LiveServer, token: str | None = TOKEN) -> None:
        self.server = server
        self.token = token

    def call(
        self,
        method: str,
        path: str,
        body: Any = DEFAULT,
        *,
        raw: bytes | None = None,
        content_type: str = "application/json",
        token: Any = DEFAULT,
        authorization: str | None = None,
        validate: bool = True,
        admin_api: bool = True,
    ) -> requests.Response:
        token = self.token if token is DEFAULT else token
        headers = {}
        if authorization is not None:
            headers["Authorization"] = authorization
        elif token is not None:
            headers["Authorization"] = f"Bearer {token}"
        data = raw
        if body is not DEFAULT:
            data = json.dumps(body).encode("utf-8")
        if data is not None:
            headers["Content-Type"] = content_type
        response = requests.request(
            method, self.server.http_url(path), data=data, headers=headers, timeout=TIMEOUT
        )
        if validate:
            # The description names each path once, without the trailing
            # slash that the server also accepts.
            sent = response.request.copy()
            sent.url = (sent.url or "").removesuffix("/")
            SPEC.validate_response(RequestsOpenAPIRequest(sent), RequestsOpenAPIResponse(response))
        if admin_api:
            assert response.headers.get("Cache-Control") == "no-store", response.headers
        return response

    def rooms(self) -> list[dict[str, Any]]:
        answer = self.call("GET", "/admin/rooms")
        assert answer.status_code == 200, answer.text
        rooms: list[dict[str, Any]] = answer.json()["rooms"]
        return rooms

    def post(self, room: str, message: dict[str, Any]) -> requests.Response:
        return self.call("POST", f"/admin/rooms/{room}/messages", message)


def problem(answer: requests.Response, status: int, error: str, details: Any = DEFAULT) -> None:
    assert answer.status_code == status, (answer.status_code, answer.text)
    assert answer.headers["Content-Type"] == "application/json"
    body = answer.json()
    assert set(body) == {"error", "details"}, body
    assert body["error"] == error, body
    if details is not DEFAULT:
        assert body["details"] == details, body


def server_message(event: str, data: Any, to: Any) -> dict[str, Any]:
    return {"event": event, "data": data, "from": None, "to": to}
