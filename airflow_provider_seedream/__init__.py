"""Apache Airflow provider for ByteDance Seedream image generation."""

from __future__ import annotations

from typing import Any

__version__ = "0.2.0"

CONNECTION_UI: dict[str, Any] = {
    "hidden-fields": ["schema", "port", "login"],
    "relabeling": {"host": "Base URL", "password": "API Key"},
    "placeholders": {
        "host": "https://api.cometapi.com",
        "password": "your CometAPI, Ark or ModelArk API key",
        "extra": '{"model": "doubao-seedream-5-0-260128", "parameters": {"watermark": false}}',
    },
}

CONNECTION_FIELDS: dict[str, Any] = {
    "model": {
        "label": "Default model",
        "description": "Model id used when a task names none.",
        "schema": {"type": ["string", "null"], "default": "doubao-seedream-5-0-260128"},
    },
    "endpoint_path": {
        "label": "Endpoint path",
        "description": "Overrides the path derived from the Base URL (e.g. /api/v3/images/generations).",
        "schema": {"type": ["string", "null"]},
    },
    "timeout": {
        "label": "Read timeout (seconds)",
        "description": "How long to wait for a generation; a 2K image takes 25-45 s.",
        "schema": {"type": ["number", "null"]},
    },
    "max_retries": {
        "label": "Retries",
        "description": "Retries of rate-limited (429), failed (500/503) or unconnected requests (default 6).",
        "schema": {"type": ["integer", "null"]},
    },
    "retry_unknown_outcome": {
        "label": "Send again when the outcome is unknown",
        "description": "Also retry read timeouts, dropped answers and gateway 502/504s. They may have been "
        "billed, so an image can then be paid for twice.",
        "schema": {"type": ["boolean", "null"], "default": False},
    },
}


def get_provider_info() -> dict[str, Any]:
    """Describe the provider to Airflow's providers manager (the ``apache_airflow_provider`` entry point)."""
    return {
        "package-name": "airflow-provider-seedream",
        "name": "Seedream",
        "description": "Image generation with ByteDance Seedream models (CometAPI, VolcEngine Ark, BytePlus ModelArk).",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": "Seedream",
                "external-doc-url": "https://api.cometapi.com",
                "tags": ["ai"],
            }
        ],
        "hooks": [{"integration-name": "Seedream", "python-modules": ["airflow_provider_seedream.hooks.seedream"]}],
        "operators": [
            {"integration-name": "Seedream", "python-modules": ["airflow_provider_seedream.operators.seedream"]}
        ],
        "connection-types": [
            {
                "hook-class-name": "airflow_provider_seedream.hooks.seedream.SeedreamHook",
                "hook-name": "Seedream",
                "connection-type": "seedream",
                "ui-field-behaviour": CONNECTION_UI,
                "conn-fields": CONNECTION_FIELDS,
            }
        ],
        "extra-links": [
            "airflow_provider_seedream.links.SeedreamImagesLink",
            "airflow_provider_seedream.links.CatalogGalleryLink",
        ],
    }
