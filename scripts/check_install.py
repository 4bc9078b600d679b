"""Check an installed wheel of the provider: run by ``make dist`` in a fresh virtual environment.

Run from outside the source tree, so that only the installed package can be imported. It checks
that Airflow lists the provider and its connection type, and that the hook, against the emulator
the wheel ships, generates an image.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def main() -> int:
    from airflow.providers_manager import ProvidersManager

    import airflow_provider_seedream

    location = Path(airflow_provider_seedream.__file__).resolve()
    if "site-packages" not in location.parts:
        print(f"imported from {location}, not from the installed wheel", file=sys.stderr)
        return 1
    providers = ProvidersManager()
    provider = providers.providers.get("airflow-provider-seedream")
    if provider is None or provider.version != airflow_provider_seedream.__version__:
        print(f"Airflow lists no airflow-provider-seedream {airflow_provider_seedream.__version__}", file=sys.stderr)
        return 1
    if "seedream" not in [declared["connection-type"] for declared in provider.data.get("connection-types", [])]:
        print("Airflow lists no 'seedream' connection type", file=sys.stderr)
        return 1

    from airflow_provider_seedream.emulator import EmulatorServer
    from airflow_provider_seedream.hooks.seedream import SeedreamHook

    with EmulatorServer() as emulator:
        os.environ["AIRFLOW_CONN_SEEDREAM_DEFAULT"] = json.dumps(
            {"conn_type": "seedream", "host": emulator.url, "password": "sk-installed-wheel"}
        )
        result = SeedreamHook().generate_images("a lighthouse at dawn", size="2K")
    if len(result.images) != 1:
        print(f"the emulator answered {len(result.images)} images, not 1", file=sys.stderr)
        return 1
    print(
        f"installed wheel: airflow-provider-seedream {provider.version} at {location.parent}; "
        f"Airflow lists it and its connection type; the hook generated an image from its emulator"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
