"""What a DAG scheduled on a generation task's asset reads from the asset's events."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

log = logging.getLogger(__name__)


def stored_image_sets(events: Iterable[Any]) -> list[dict[str, Any]]:
    """
    One entry per asset event of ``SeedreamToS3Operator``: where its images are, and who made them.

    Each entry holds ``bucket``, ``prefix``, ``keys`` and ``prompts`` (parallel lists: ``keys[i]``
    was made from ``prompts[i]``), ``produced_by`` (``<dag id>/<run id>``) and ``produced_at``.
    The keys are logged as ``s3://`` URIs.
    """
    sets = []
    for event in events:
        extra = dict(event.extra or {})
        bucket, keys = extra.get("bucket"), list(extra.get("keys") or [])
        log.info(
            "New images from %s (%s): %d under s3://%s/%s",
            event.source_dag_id,
            event.timestamp,
            len(keys),
            bucket,
            extra.get("prefix"),
        )
        for key in keys:
            log.info("  s3://%s/%s", bucket, key)
        sets.append(
            {
                "bucket": bucket,
                "prefix": extra.get("prefix"),
                "keys": keys,
                "prompts": list(extra.get("prompts") or []),
                "produced_by": f"{event.source_dag_id}/{event.source_run_id}",
                "produced_at": event.timestamp.isoformat(),
            }
        )
    return sets


def latest_events(inlet_events: Any, asset: Any) -> list[Any]:
    """
    The newest event of ``asset`` among a task's ``inlet_events``, as a list of at most one.

    Airflow 3.2 and later query the newest event alone; 3.1 gives every event of the asset.
    """
    from airflow_provider_seedream.version_compat import AIRFLOW_V_3_2_PLUS

    if inlet_events is None:
        return []
    events = inlet_events[asset]
    if AIRFLOW_V_3_2_PLUS:
        return list(events.ascending(False).limit(1))
    return sorted(events, key=lambda event: event.timestamp)[-1:]
