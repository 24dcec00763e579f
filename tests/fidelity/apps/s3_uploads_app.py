"""Scenario boto3 on S3: an upload route stores a file with `put_object`, reads it back, and appends it to the
user's manifest. S3_ENDPOINT_URL, UPLOAD_BUCKET and the AWS credentials are read inside the request (the
client is built per request), through botocore's own environment lookups.

A user's first upload has no manifest yet: `get_object` raises NoSuchKey, which `app` does not handle (500).
`fixed_app` starts a new manifest and writes it (a call the recording never saw).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import boto3
from fastapi import FastAPI

import fluxrun

fluxrun.init()  # FLUXRUN_CAPTURE_KEY and FLUXRUN_DIR come from the environment


def build(fixed: bool) -> FastAPI:
    app = FastAPI()
    app.add_middleware(fluxrun.FluxRunMiddleware)

    @app.post("/users/{user}/files")
    def upload(user: str, payload: dict[str, Any]) -> dict[str, Any]:  # sync: runs in a worker thread
        s3 = boto3.client("s3", endpoint_url=os.environ["S3_ENDPOINT_URL"], region_name="us-east-1")
        bucket = os.environ["UPLOAD_BUCKET"]
        key = f"uploads/{user}/{payload['name']}"
        content = payload["content"].encode()
        s3.put_object(Bucket=bucket, Key=key, Body=content, ContentType="text/plain")
        stored = s3.get_object(Bucket=bucket, Key=key)["Body"].read()  # read it back before listing it
        if hashlib.sha256(stored).hexdigest() != hashlib.sha256(content).hexdigest():
            raise RuntimeError(f"{key} was stored damaged")
        manifest_key = f"manifests/{user}.json"
        if fixed:
            try:
                manifest = json.loads(s3.get_object(Bucket=bucket, Key=manifest_key)["Body"].read())
            except s3.exceptions.NoSuchKey:
                manifest = {"files": []}  # a user's first upload
        else:
            manifest = json.loads(s3.get_object(Bucket=bucket, Key=manifest_key)["Body"].read())
        manifest["files"].append({"key": key, "size": len(stored)})
        s3.put_object(Bucket=bucket, Key=manifest_key, Body=json.dumps(manifest).encode())
        return {"key": key, "files": len(manifest["files"])}

    return app


app = build(fixed=False)
fixed_app = build(fixed=True)
