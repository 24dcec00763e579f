"""boto3 on S3 (urllib3 under botocore): a FastAPI upload route under uvicorn stores a file with `put_object`,
reads it back, then reads the user's manifest, which a first upload does not have: NoSuchKey, 500.

moto's own S3 server runs in its own process. The failure is captured by the app process, moto is stopped,
and the replay runs offline in a fresh process a day later without the S3 settings or AWS credentials, three
times: the same NoSuchKey, the same fingerprint. The fixed app then replays as `fixed`, with the manifest
write it newly makes supplied as an answer, while a new moto server listens on the recorded port: its access
log shows that no replay request reached it.
"""

from __future__ import annotations

import boto3
import httpx
import pytest
from client_harness import moto_s3, requests_logged
from harness import app_server, assert_stopped, one_bundle, replay_offline
from servers import free_port

pytestmark = pytest.mark.slow

BUCKET = "fidelity-uploads"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "AKIAFIDELITY0EXAMPLE", "AWS_SECRET_ACCESS_KEY": "fidelity/secret/key/0123456789"}
SETTINGS = ("S3_ENDPOINT_URL", "UPLOAD_BUCKET", *CREDENTIALS)
UPLOAD = {"name": "report.txt", "content": "quarterly numbers\n"}


@pytest.fixture(scope="module")
def capture(tmp_path_factory, keys):
    folder = tmp_path_factory.mktemp("boto3-s3")
    port = free_port()
    with moto_s3(port) as moto:
        s3 = boto3.client("s3", endpoint_url=moto.url, region_name="us-east-1", aws_access_key_id="setup",
                          aws_secret_access_key="setup")  # fmt: skip
        s3.create_bucket(Bucket=BUCKET)
        settings = {"S3_ENDPOINT_URL": moto.url, "UPLOAD_BUCKET": BUCKET, **CREDENTIALS}
        with app_server("s3_uploads_app:app", keys, folder / "bundles", settings) as app:
            response = httpx.post(f"{app}/users/u-7/files", json=UPLOAD, timeout=30)
            bundle = one_bundle(folder / "bundles")
        stored = s3.get_object(Bucket=BUCKET, Key="uploads/u-7/report.txt")["Body"].read()
        moto_requests = requests_logged(moto)
    assert_stopped(moto.url)
    return {"bundle": bundle, "response": response, "stored": stored, "moto_requests": moto_requests,
            "port": port, "endpoint": moto.url}  # fmt: skip


def test_a_first_upload_stores_the_file_then_fails_on_the_missing_manifest(capture):
    assert capture["response"].status_code == 500
    assert capture["stored"] == b"quarterly numbers\n"
    # create_bucket, put_object, get_object (read back), get_object (manifest: 404), get_object (the test)
    assert capture["moto_requests"] == 5


@pytest.fixture(scope="module")
def replays(capture, keys):
    return replay_offline(capture["bundle"], "s3_uploads_app:app", keys, env_without=SETTINGS, times=3)


def test_replay_without_s3_settings_a_day_later_reproduces_no_such_key(replays):
    replays.assert_reproduced(times=3, max_seconds=1.0)
    for run in replays.runs:
        assert run["new"]["error_type"] == "botocore.errorfactory:NoSuchKey" and run["status"] == 500
        assert run["served"]["http"] == 3


def test_the_guard_holds_strictly(replays):
    replays.assert_every_recorded_call_made()


def test_the_fixed_app_writes_a_new_manifest_and_no_request_reaches_s3(capture, replays, keys):
    manifest_url = f"{capture['endpoint']}/{BUCKET}/manifests/u-7.json"
    answers = [["http", ["PUT", manifest_url], {"status": 200, "headers": {"ETag": '"0f1e2d3c"'}}]]
    with moto_s3(capture["port"]) as moto:  # a new, empty moto on the port the recording names
        fixed = replay_offline(capture["bundle"], "s3_uploads_app:fixed_app", keys, env_without=SETTINGS,
                               expect="fixed", times=1, answers=answers)  # fmt: skip
        run = fixed.assert_fixed()
        assert run["status"] == 200 and run["supplied"] == [f"http PUT {manifest_url} (1 call)"]
        assert httpx.Response(200, content=run["body"]).json() == {"key": "uploads/u-7/report.txt", "files": 1}
        assert requests_logged(moto) == 0
