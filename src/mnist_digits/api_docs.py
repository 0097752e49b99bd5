"""The API's own documentation: the Swagger UI page at /docs, served offline, and what OpenAPI cannot
learn from the routes (request bodies that the endpoints read themselves, to enforce the limits).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from . import schemas

# Swagger UI's script, style and icon, as the fastapi-offline package ships them: /docs works offline.
DOCS_ASSETS = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "favicon.png": "image/png",
}
DOCS_PAGE = b"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>mnist-digits API</title>
<link rel="icon" href="/docs/favicon.png">
<link rel="stylesheet" href="/docs/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="/docs/swagger-ui-bundle.js"></script>
<script src="/docs/init.js"></script>
</body>
</html>
"""
# A script of its own rather than inline, so that the page's CSP needs no 'unsafe-inline'. No validator
# badge: it would send the API's description to an outside site.
DOCS_SCRIPT = b"""window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  layout: "BaseLayout",
  deepLinking: true,
  showExtensions: true,
  showCommonExtensions: true,
  validatorUrl: null,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
});
"""


def predict_request_body(
    *, max_body_bytes: int, max_batch: int, max_image_pixels: int, max_request_pixels: int
) -> dict[str, Any]:
    """OpenAPI for the two accepted bodies (the endpoint reads the body itself to enforce limits)."""
    return {
        "required": True,
        "description": f"At most {max_body_bytes // 2**20} MiB and {max_batch} images; "
        f"each image at most {max_image_pixels:,} pixels, all of them together at most "
        f"{max_request_pixels:,}.",
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {"type": "array", "items": {"type": "string", "format": "binary"}}
                    },
                    "required": ["file"],
                }
            },
        },
    }


def json_request_body(model: str) -> dict[str, Any]:
    """OpenAPI for a JSON body that the endpoint reads itself (to answer malformed JSON with 400)."""
    return {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model}"}}},
    }


def document_json_bodies(app: FastAPI) -> None:
    """Add the JSON requests' models to the OpenAPI components (no route parameter declares them)."""
    components: dict[str, Any] = {}
    for model in (schemas.PredictRequest, schemas.FeedbackRequest):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update({**schema.pop("$defs", {}), model.__name__: schema})
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            build().setdefault("components", {}).setdefault("schemas", {}).update(components)
        assert app.openapi_schema is not None
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
