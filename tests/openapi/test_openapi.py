"""The committed OpenAPI document passes a real OpenAPI validator (openapi-spec-validator) and
documents what clients rely on. That it matches the code is checked by tests/openapi.rs."""

import json
from pathlib import Path

from openapi_spec_validator import validate

SPEC = Path(__file__).resolve().parents[2] / "proto" / "openapi.json"


def test_document_is_valid_openapi():
    doc = json.loads(SPEC.read_text())
    validate(doc)
    assert doc["openapi"].startswith("3.")
    paths = doc["paths"]
    classify = paths["/v1/models/{name}/classify"]["post"]
    assert {"image/png", "application/json", "multipart/form-data"} <= set(classify["requestBody"]["content"])
    ok = classify["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    result = doc["components"]["schemas"][ok.rsplit("/", 1)[1]]
    assert {"class_id", "label", "timesteps_used", "confidence"} <= set(result["properties"])
    for p in ("/v2", "/v2/health/live", "/v2/health/ready", "/v2/models/{model}", "/v2/models/{model}/ready",
              "/v2/models/{model}/infer", "/v2/models/{model}/versions/{version}/infer"):
        assert p in paths, p
    admin = paths["/admin/models/{name}/exit-policy"]["put"]
    assert admin["security"] == [{"admin_token": []}]
    assert doc["components"]["securitySchemes"]["admin_token"]["scheme"] == "bearer"
