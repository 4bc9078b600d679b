"""Command line: ``python -m airflow_provider_seedream.emulator [--host H] [--port P] [knobs]``."""

from __future__ import annotations

import argparse
import contextlib
import logging
from collections.abc import Sequence

from airflow_provider_seedream.emulator.config import EmulatorConfig

LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


def build_parser() -> argparse.ArgumentParser:
    """Return the command line parser."""
    parser = argparse.ArgumentParser(
        prog="python -m airflow_provider_seedream.emulator",
        description="Run a local emulator of the Seedream image endpoint "
        "(POST /v1/images/generations and /api/v3/images/generations).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8089, help="port; 0 picks a free one (default: %(default)s)")
    parser.add_argument("--api-key", help="the only bearer key accepted (default: any non-empty key)")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to each generation")
    parser.add_argument(
        "--latency-jitter",
        type=float,
        default=0.0,
        help="up to this many seconds more per generation, drawn uniformly (seeded by --fault-seed)",
    )
    parser.add_argument(
        "--latency-per-image",
        action="store_true",
        help="a group of n images takes n latencies, answered at once or streamed one every latency",
    )
    parser.add_argument(
        "--images-per-minute",
        type=float,
        default=None,
        help="the account's limit of images per minute for each model, answered 429 "
        "ModelAccountIpmRateLimitExceeded beyond it (default: no limit)",
    )
    parser.add_argument(
        "--burst-seconds",
        type=float,
        default=6.0,
        help="seconds' worth of --images-per-minute a model's token bucket holds when full (default: %(default)s)",
    )
    parser.add_argument(
        "--rate-429", type=float, default=0.0, help="share of generations answered 429 RequestBurstTooFast"
    )
    parser.add_argument("--retry-after", type=float, default=1.0, help="Retry-After seconds sent with 429")
    parser.add_argument("--quota-exceeded", action="store_true", help="answer every generation 429 QuotaExceeded")
    parser.add_argument("--rate-500", type=float, default=0.0, help="share of generations answered 500")
    parser.add_argument(
        "--rate-503", type=float, default=0.0, help="share of generations answered 503 ServiceUnavailable"
    )
    parser.add_argument(
        "--rate-502", type=float, default=0.0, help="share of generations made, then answered 502 by a gateway"
    )
    parser.add_argument(
        "--rate-504", type=float, default=0.0, help="share of generations made, then answered 504 by a gateway"
    )
    parser.add_argument(
        "--rate-reset",
        type=float,
        default=0.0,
        help="share of generations whose connection breaks (a stream is cut after some of its images)",
    )
    parser.add_argument("--rate-slow", type=float, default=0.0, help="share of generations delayed by --slow-seconds")
    parser.add_argument("--slow-seconds", type=float, default=30.0, help="delay of a slow generation")
    parser.add_argument(
        "--bill-abandoned",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="generate and bill requests whose answer never reaches the client: client gone, "
        "reset, 502, 504 (default: on)",
    )
    parser.add_argument("--rate-item-error", type=float, default=0.0, help="share of items failing moderation")
    parser.add_argument("--rate-truncate", type=float, default=0.0, help="share of downloads cut short")
    parser.add_argument("--rate-download-500", type=float, default=0.0, help="share of downloads answered 500")
    parser.add_argument(
        "--rate-download-denied", type=float, default=0.0, help="share of downloads answered 403 AccessDenied"
    )
    parser.add_argument("--url-ttl", type=float, default=86400.0, help="seconds a signed link stays valid")
    parser.add_argument(
        "--no-fetch-references",
        dest="fetch_references",
        action="store_false",
        help="do not fetch http(s) reference images",
    )
    parser.add_argument("--fault-seed", type=int, help="seed of the random fault choices")
    parser.add_argument("--log-level", choices=LOG_LEVELS, default="info", help="(default: %(default)s)")
    return parser


def config_from_args(args: argparse.Namespace) -> EmulatorConfig:
    """Return the knobs given on the command line."""
    return EmulatorConfig(
        api_key=args.api_key,
        latency=args.latency,
        latency_jitter=args.latency_jitter,
        latency_per_image=args.latency_per_image,
        images_per_minute=args.images_per_minute,
        burst_seconds=args.burst_seconds,
        rate_429=args.rate_429,
        retry_after=args.retry_after,
        quota_exceeded=args.quota_exceeded,
        rate_500=args.rate_500,
        rate_503=args.rate_503,
        rate_502=args.rate_502,
        rate_504=args.rate_504,
        rate_reset=args.rate_reset,
        rate_slow=args.rate_slow,
        slow_seconds=args.slow_seconds,
        bill_abandoned=args.bill_abandoned,
        rate_download_denied=args.rate_download_denied,
        rate_item_error=args.rate_item_error,
        rate_truncate=args.rate_truncate,
        rate_download_500=args.rate_download_500,
        url_ttl=args.url_ttl,
        fetch_references=args.fetch_references,
        fault_seed=args.fault_seed,
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the command line and serve until interrupted."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except ValueError as error:
        parser.error(str(error))
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from airflow_provider_seedream.emulator.server import serve_forever

    with contextlib.suppress(KeyboardInterrupt):
        serve_forever(config, args.host, args.port, log_level=args.log_level)


if __name__ == "__main__":
    main()
