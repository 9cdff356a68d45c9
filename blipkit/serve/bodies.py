"""Request bodies: JSON, or multipart form fields and uploaded files, read into the routes' pydantic models; and
how the OpenAPI document describes them."""

from __future__ import annotations

import copy
import json
from typing import Any

from fastapi import Request
from pydantic import BaseModel
from starlette.datastructures import UploadFile

from blipkit.serve.limits import RequestRefused


def openapi_body(model: type[BaseModel], forms: bool = True) -> dict[str, Any]:
    """The OpenAPI request body of a route that reads ``model`` as JSON or (``forms``) as multipart form fields,
    images as uploaded files."""
    schema = _inlined(model.model_json_schema())
    content = {"application/json": {"schema": schema}}
    if forms:
        form = copy.deepcopy(schema)
        for name in ("image", "images"):
            if name in form["properties"]:
                binary = {"type": "string", "format": "binary"}
                form["properties"][name] = {"type": "array", "items": binary} if name == "images" else binary
        content["multipart/form-data"] = {"schema": form}
    return {"requestBody": {"required": True, "content": content}}


async def read_body(request: Request, model: type[BaseModel], forms: bool = True) -> Any:
    """The body as ``model``: JSON, or (``forms``) multipart form fields and files, a repeated field a list."""
    kind = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if forms and kind == "multipart/form-data":
        fields: dict[str, list[Any]] = {}
        async with request.form() as form:
            for name, value in form.multi_items():
                fields.setdefault(name, []).append(await value.read() if isinstance(value, UploadFile) else value)
        lists = {name for name, field in model.model_json_schema()["properties"].items() if _is_array(field)}
        data: Any = {name: values if name in lists or len(values) > 1 else values[0] for name, values in fields.items()}
    elif kind == "application/json" or kind.endswith("+json"):
        try:
            data = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise RequestRefused(400, "invalid_json", f"the body is not valid JSON: {error}") from None
    else:
        raise RequestRefused(
            415, "unsupported_media_type", f"cannot read a body of type {kind}: send {' or '.join(_KINDS[: 1 + forms])}"
        )
    return model.model_validate(data)


def _inlined(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with its ``$defs`` written where they are referred to: a JSON schema's refs point into itself,
    an OpenAPI document's into the document (the routes' models are not recursive)."""
    definitions = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return inline(definitions[node["$ref"].rsplit("/", 1)[-1]])
            return {key: inline(value) for key, value in node.items()}
        return [inline(value) for value in node] if isinstance(node, list) else node

    return inline(schema)


_KINDS = ("application/json", "multipart/form-data")


def _is_array(schema: dict[str, Any]) -> bool:
    return schema.get("type") == "array" or any(s.get("type") == "array" for s in schema.get("anyOf", []))
