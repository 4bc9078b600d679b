"""Operator extra links: recorded while a task runs, served by the REST API's links endpoint after the run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from typing import Any

import pytest

from airflow_provider_seedream.links import CatalogGalleryLink, SeedreamImagesLink, s3_url

# The public REST API answered in a fresh process (FastAPI's test client on Airflow's own app,
# with the simple auth manager treating every request as an admin's): no server to start.
_LINKS = """
import json, os, sys
os.environ["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS"] = "True"
from fastapi.testclient import TestClient
from sqlalchemy import select
from airflow.api_fastapi.app import create_app
from airflow.models import DagRun
from airflow.utils.session import create_session

dag_id, asked = sys.argv[1], json.loads(sys.argv[2])
with create_session() as session:
    run_id = session.scalars(select(DagRun.run_id).where(DagRun.dag_id == dag_id).order_by(DagRun.id.desc())).first()
answers = {}
with TestClient(create_app("core")) as client:
    # Every user is an admin, but some cores still want a token: the one the auth manager hands out.
    token = client.get("/auth/token")
    if token.status_code == 201:
        client.headers["Authorization"] = f"Bearer {token.json()['access_token']}"
    for task_id, map_index in asked:
        url = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/links"
        response = client.get(url, params={"map_index": map_index})
        answers[f"{task_id}[{map_index}]"] = {"status": response.status_code, "body": response.json()}
print(json.dumps(answers))
"""


def rest_links(dag_id: str, *task_instances: tuple[str, int]) -> dict[str, dict[str, Any]]:
    """The REST API's answer for the extra links of each ``(task_id, map_index)`` of ``dag_id``'s latest run."""
    done = subprocess.run(
        [sys.executable, "-c", _LINKS, dag_id, json.dumps(task_instances)],
        capture_output=True, text=True, timeout=180, env=os.environ.copy(), check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    answers = json.loads(done.stdout.strip().splitlines()[-1])
    assert all(answer["status"] == 200 for answer in answers.values()), answers
    return answers


def test_links_go_to_the_s3_console_on_aws_and_to_the_endpoint_elsewhere():
    assert s3_url("assets", prefix="catalog/images", region="eu-west-1") == (
        "https://console.aws.amazon.com/s3/buckets/assets?region=eu-west-1&prefix=catalog%2Fimages%2F&showversions=false"
    )
    assert s3_url("assets", key="review/gallery.html", region="us-east-1") == (
        "https://console.aws.amazon.com/s3/object/assets?region=us-east-1&prefix=review%2Fgallery.html"
    )
    assert s3_url("assets", prefix="", region="cn-north-1").startswith("https://console.amazonaws.cn/s3/buckets/assets?")
    assert s3_url("assets", key="k", region="us-gov-west-1").startswith("https://console.amazonaws-us-gov.com/s3/object/")
    assert s3_url("assets", prefix="banners/2026-01-01", endpoint_url="http://minio:9000/") == (
        "http://minio:9000/assets?list-type=2&prefix=banners%2F2026-01-01%2F"
    )
    assert s3_url("assets", key="review/my gallery.html", endpoint_url="https://s3.example") == (
        "https://s3.example/assets/review/my%20gallery.html"
    )


def test_links_are_kept_in_xcom_under_their_own_key():
    assert (SeedreamImagesLink().name, SeedreamImagesLink().xcom_key) == ("Images in S3", "seedream_images_link")
    assert (CatalogGalleryLink().name, CatalogGalleryLink().xcom_key) == ("Catalog gallery", "seedream_gallery_link")


def test_the_provider_declares_its_links():
    from airflow_provider_seedream import get_provider_info

    assert get_provider_info()["extra-links"] == [
        "airflow_provider_seedream.links.SeedreamImagesLink",
        "airflow_provider_seedream.links.CatalogGalleryLink",
    ]


@pytest.mark.usefixtures("airflow_db")
def test_a_finished_task_links_to_its_images_through_the_rest_api(seedream_emulator, s3_client, s3_server, bucket):
    from tests.dag_runs import airflow_dags_test

    conf = {"prompts": ["a red apple"], "bucket": bucket, "prefix": "linked/run", "size": "2K"}
    done = airflow_dags_test("seedream_test_batch", **conf)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    answer = rest_links("seedream_test_batch", ("generate", -1))["generate[-1]"]
    link = f"{s3_server}/{bucket}?list-type=2&prefix=linked%2Frun%2F"
    assert answer == {"status": 200, "body": {"extra_links": {"Images in S3": link}, "total_entries": 1}}
    with urllib.request.urlopen(link, timeout=30) as response:  # the endpoint lists the images
        assert b"<Key>linked/run/00000-00.jpg</Key>" in response.read()


def test_airflow_finds_the_links_through_the_provider():
    from airflow.providers_manager import ProvidersManager

    names = ProvidersManager().extra_links_class_names
    assert "airflow_provider_seedream.links.SeedreamImagesLink" in names
    assert "airflow_provider_seedream.links.CatalogGalleryLink" in names
