"""An S3-compatible server for tests: moto's standalone server as a separate process on 127.0.0.1.

    server = S3Server.start()          # a free port, one bucket, ready to serve
    server.env                         # AWS_* for this process, subprocesses and Spark executors
    server.uri("store")                # s3://<bucket>/store
    server.keys("store/datasets")      # object keys, listed with pyarrow (not through ringtrain)
    server.stop()                      # the process group is killed; no process or port is left

The fixture `s3_server` in conftest.py wraps it for a whole test session.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid

import pyarrow.fs as pafs

from ringtrain.training.environment import free_port

BIN = os.path.dirname(sys.executable)


class S3Server:
    def __init__(self, proc: subprocess.Popen, port: int, bucket: str, log_path: str):
        self.proc, self.port, self.bucket, self.log_path = proc, port, bucket, log_path
        self.endpoint = f"http://127.0.0.1:{port}"
        self.env = {"AWS_ACCESS_KEY_ID": "ringtrain-test", "AWS_SECRET_ACCESS_KEY": "ringtrain-test",
                    "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": self.endpoint}

    @classmethod
    def start(cls, log_dir: str, bucket: str = "ringtrain-tests", timeout_s: float = 60.0) -> "S3Server":
        port = free_port()
        log_path = os.path.join(log_dir, f"moto-{port}.log")
        with open(log_path, "w") as log:
            proc = subprocess.Popen([os.path.join(BIN, "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        server = cls(proc, port, bucket, log_path)
        deadline = time.time() + timeout_s
        while not server.answers():
            if proc.poll() is not None or time.time() > deadline:
                server.stop()
                raise RuntimeError(f"moto_server did not start on port {port}: " + open(log_path).read()[-2000:])
            time.sleep(0.2)
        server.filesystem().create_dir(bucket)
        return server

    def answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def filesystem(self) -> pafs.S3FileSystem:
        """A client of its own (independent of ringtrain.store) for assertions."""
        return pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{self.port}", scheme="http", region="us-east-1",
                                 access_key=self.env["AWS_ACCESS_KEY_ID"],
                                 secret_key=self.env["AWS_SECRET_ACCESS_KEY"], allow_bucket_creation=True)

    def uri(self, *parts: str) -> str:
        return "/".join([f"s3://{self.bucket}", *parts])

    def fresh_uri(self, name: str) -> str:
        """A prefix no other test uses."""
        return self.uri(f"{name}-{uuid.uuid4().hex[:8]}")

    def keys(self, prefix: str) -> list[str]:
        """Object keys under `prefix` (a key or an s3:// URI), relative to it, sorted; folder markers left out."""
        prefix = prefix[len(f"s3://{self.bucket}/"):] if prefix.startswith("s3://") else prefix
        selector = pafs.FileSelector(f"{self.bucket}/{prefix}", recursive=True, allow_not_found=True)
        base = f"{self.bucket}/{prefix}/"
        return sorted(i.path[len(base):] for i in self.filesystem().get_file_info(selector)
                      if i.type == pafs.FileType.File)

    def read(self, uri: str) -> bytes:
        with self.filesystem().open_input_stream(uri[len("s3://"):]) as f:
            return f.read()

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
