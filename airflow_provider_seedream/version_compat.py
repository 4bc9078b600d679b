"""What differs between the Airflow cores this provider supports (3.1, 3.2 and 3.3), in one place.

Names that moved between cores are taken from the common-compat provider, which resolves each to
where the running core keeps it (``airflow.sdk`` on newer cores, ``airflow`` on older ones).
Features that need a newer core check :func:`require` and fail with the version they need.
"""

from __future__ import annotations

from packaging.version import Version

from airflow import __version__ as AIRFLOW_VERSION_STRING
from airflow.providers.common.compat.sdk import (
    AirflowFailException,
    AirflowNotFoundException,
    AirflowTaskTimeout,
    conf,
)

AIRFLOW_VERSION = Version(Version(AIRFLOW_VERSION_STRING).base_version)
AIRFLOW_V_3_2_PLUS = AIRFLOW_VERSION >= Version("3.2.0")
AIRFLOW_V_3_3_PLUS = AIRFLOW_VERSION >= Version("3.3.0")
MINIMUM_AIRFLOW = Version("3.1.0")


class AirflowTooOld(ImportError):
    """A feature of this provider needs a newer Airflow core than the one installed."""


def require(feature: str, minimum: str) -> None:
    """Raise :class:`AirflowTooOld` naming ``feature`` when the core is older than ``minimum``."""
    if AIRFLOW_VERSION < Version(minimum):
        raise AirflowTooOld(
            f"{feature} needs Airflow {minimum} or newer; this is Airflow {AIRFLOW_VERSION_STRING}. "
            "Upgrade Airflow, or leave this feature out."
        )


__all__ = [
    "AIRFLOW_VERSION",
    "AIRFLOW_V_3_2_PLUS",
    "AIRFLOW_V_3_3_PLUS",
    "MINIMUM_AIRFLOW",
    "AirflowFailException",
    "AirflowNotFoundException",
    "AirflowTaskTimeout",
    "AirflowTooOld",
    "conf",
    "require",
]
