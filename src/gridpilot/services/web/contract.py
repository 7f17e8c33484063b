"""What the OpenAPI document promises about each route: the error answers it can give, with
their body, and whether it needs a session. Route decorators take ``responses=errors(...)``
and ``security=SECURED``; ``finish_openapi`` corrects what Litestar would otherwise document
wrongly (its validation errors as 400, a 204 as a JSON body).

tests/web/test_api_contract.py runs schemathesis against the live app to keep this true.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Litestar
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import OpenAPIResponse, Operation, SecurityRequirement


class ErrorBody(msgspec.Struct, frozen=True, kw_only=True):
    """Every error answer's body."""

    status_code: int  # the HTTP status again
    detail: str  # what was wrong and what to do, in words
    extra: list[dict[str, Any]] | dict[str, Any] | None = None  # per-field problems (422)


# the meaning of each error status in this API; a route may say it more precisely
MEANING: dict[int, str] = {
    401: "Not logged in, or the session ended: POST /api/auth/login (again).",
    403: "Refused: the role does not allow it, the one-time password is not changed yet, or "
    "the request came from another origin (a browser's Origin or Referer header that is not "
    "this service's, or a cookie-signed request with neither).",
    404: "Unknown grid, equipment, alarm or user.",
    415: "A body that is not sent as Content-Type: application/json.",
    422: "A malformed request (a body or a parameter of the wrong type or range): detail and "
    "extra say what was wrong.",
    429: "Too many failed sign-ins: wait as long as Retry-After says, then try again.",
    503: "The message bus, or the platform service that answers this request, did not answer.",
}

SECURED: list[SecurityRequirement] = [{"bearer": []}, {"cookie": []}]
"""The security requirement of every route that needs a session (token or cookie)."""


def errors(*codes: int, **meaning: str) -> dict[int, ResponseSpec]:
    """The ``responses=`` of a route that can answer the error ``codes``; ``meaning`` gives a
    route's own description of a code, keyed ``e401``, ``e403``, ..."""
    unknown = [c for c in codes if c not in MEANING]
    if unknown:
        raise ValueError(f"no meaning written for status {unknown}: add it to MEANING")
    return {
        code: ResponseSpec(
            data_container=ErrorBody,
            description=meaning.get(f"e{code}", MEANING[code]),
            generate_examples=False,  # the document stays the same from run to run
        )
        for code in codes
    }


def finish_openapi(app: Litestar) -> None:
    """Make the app's OpenAPI document say what the API does (call once, from create_app):
    no 400 (this API answers malformed requests with 422, where Litestar documents its
    validation errors as 400) and no body with a 204."""
    openapi = app.openapi_schema  # built once, then served as it is after this
    for path_item in (openapi.paths or {}).values():
        for method in ("get", "put", "post", "delete", "patch"):
            operation: Operation | None = getattr(path_item, method)
            if operation is None or not operation.responses:
                continue
            operation.responses.pop("400", None)
            empty = operation.responses.get("204")
            if isinstance(empty, OpenAPIResponse):
                empty.content = None
