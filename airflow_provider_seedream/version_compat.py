"""What differs between the Airflow cores this provider supports (3.1, 3.2 and 3.3), in one place.

Names that moved between cores are taken from the common-compat provider, which resolves each to
where the running core keeps it (``airflow.sdk`` on newer cores, ``airflow`` on older ones).
Behaviour that differs between cores branches on the ``AIRFLOW_V_*_PLUS`` flags defined here.
"""

from __future__ import annotations

from airflow import __version__ as AIRFLOW_VERSION_STRING
from airflow.providers.common.compat.sdk import (
    AirflowFailException,
    AirflowNotFoundException,
    AirflowTaskTimeout,
    conf,
)
from packaging.version import Version

AIRFLOW_VERSION = Version(Version(AIRFLOW_VERSION_STRING).base_version)
AIRFLOW_V_3_2_PLUS = Version("3.2.0") <= AIRFLOW_VERSION
# The oldest core `make compat` proves; setup.cfg's floor is the same.
MINIMUM_AIRFLOW = Version("3.1.0")


__all__ = [
    "AIRFLOW_VERSION",
    "AIRFLOW_V_3_2_PLUS",
    "MINIMUM_AIRFLOW",
    "AirflowFailException",
    "AirflowNotFoundException",
    "AirflowTaskTimeout",
    "conf",
]
