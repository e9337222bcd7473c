"""Keep every library off the network: silc-eval reads weights and data from local paths only."""

import os

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
}


def enforce_offline() -> None:
    """Set the offline switches of the Hugging Face libraries (before they are imported)."""
    for key, value in OFFLINE_ENV.items():
        os.environ[key] = value
