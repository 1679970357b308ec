#!/usr/bin/env python3
"""A local AWS API emulator for dmf's `aws` provider tests: moto (5.x) in server mode on loopback,
with what the tests need on top of it.

Usage: python3 tests/moto/server.py PORT     (0 = a free port)
Prints "port <n>" then "ready" once listening; serves until SIGTERM/SIGINT, or until its stdin
closes (so that a server whose test died goes too).

On top of plain moto:
1. DMS timestamps as epoch seconds. moto's DMS writes ISO strings, but the awsJson1_1 protocol
   (and so the Rust SDK) wants numbers.
2. AWS behaviour moto lacks: a DMS task goes from `creating` to `ready` (moto leaves it creating,
   so it could never start); endpoints are `active`; a second CreateDBCluster with the same
   identifier fails with DBClusterAlreadyExistsFault (moto replaces the cluster).
3. DMF_MOTO_CREATING_READS=N: an RDS cluster reports `creating` to its first N status reads (moto
   makes it available at the first), so that waiting for a target can be watched.
4. Fault injection: the JSON list in the file named by DMF_MOTO_FAULTS, re-read when it changes:
   [{"action": "CreateDBCluster", "code": "Throttling", "status": 400, "count": 2, "message": "..."}]
   makes the next `count` calls of `action` (short name, or "*") fail with that error in the
   protocol's own wire format, then lets calls through. GET /__dmf_faults returns the faults left
   and how many calls each action got.
"""
import datetime
import io
import json
import os
import signal
import sys
import threading
import uuid
from urllib.parse import parse_qs

CONTROL_PATH = "/__dmf_faults"


def dms_timestamp_keys():
    """Member names whose shape is a timestamp in botocore's DMS model."""
    import botocore.session

    model = botocore.session.get_session().get_service_model("dms")
    keys = set()
    for name in model.shape_names:
        shape = model.shape_for(name)
        if shape.type_name == "structure":
            keys.update(k for k, v in shape.members.items() if v.type_name == "timestamp")
    return keys


def patch_dms_timestamps():
    import moto.dms.models as dms

    keys = dms_timestamp_keys()

    def epoch(value):
        dt = value if isinstance(value, datetime.datetime) else datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
        if dt.tzinfo is None:  # moto keeps naive UTC
            dt = dt.replace(tzinfo=datetime.timezone.utc)
        return dt.timestamp()

    def walk(obj):
        if isinstance(obj, dict):
            for k, v in obj.items():
                if k in keys and isinstance(v, (str, datetime.datetime)):
                    obj[k] = epoch(v)
                else:
                    walk(v)
        elif isinstance(obj, list):
            for v in obj:
                walk(v)
        return obj

    for name in dir(dms):
        cls = getattr(dms, name)
        if isinstance(cls, type) and cls.__module__ == dms.__name__ and "to_dict" in vars(cls):
            original = cls.to_dict
            cls.to_dict = lambda self, *a, _original=original, **kw: walk(_original(self, *a, **kw))


def patch_aws_behaviour():
    import moto.dms.models as dms
    import moto.rds.models as rds
    from moto.rds.exceptions import RDSClientError

    create_cluster = rds.RDSBackend.create_db_cluster

    def create_db_cluster(self, kwargs):
        if kwargs["db_cluster_identifier"].lower() in self.clusters:
            raise RDSClientError("DBClusterAlreadyExistsFault", "DB Cluster already exists")
        return create_cluster(self, kwargs)

    rds.RDSBackend.create_db_cluster = create_db_cluster

    create_endpoint = dms.DatabaseMigrationServiceBackend.create_endpoint

    def create_dms_endpoint(self, *a, **kw):
        endpoint = create_endpoint(self, *a, **kw)
        endpoint.status = "active"
        return endpoint

    dms.DatabaseMigrationServiceBackend.create_endpoint = create_dms_endpoint

    describe_tasks = dms.DatabaseMigrationServiceBackend.describe_replication_tasks

    def describe_replication_tasks(self, *a, **kw):
        tasks = describe_tasks(self, *a, **kw)
        for t in tasks:
            if t.status == "creating":
                t.ready()
        return tasks

    dms.DatabaseMigrationServiceBackend.describe_replication_tasks = describe_replication_tasks


def patch_slow_creation(reads):
    """Clusters stay `creating` for their first `reads` status reads, as real ones do for minutes."""
    import moto.rds.models as rds

    original = rds.DBCluster.status

    def status(self):
        seen = getattr(self, "_dmf_status_reads", 0)
        self._dmf_status_reads = seen + 1
        if seen < reads and self._status in ("creating", "available"):
            return "creating"
        return original.fget(self)

    rds.DBCluster.status = property(status, original.fset)


class Faults:
    """WSGI middleware: injected errors, in the wire format of the request's protocol."""

    def __init__(self, app, path):
        self.app, self.path, self.mtime = app, path, None
        self.faults, self.calls = [], {}
        self.lock = threading.Lock()

    def reload(self):
        if not self.path:
            return
        try:
            mtime = os.stat(self.path).st_mtime_ns
        except OSError:
            return
        if mtime != self.mtime:
            with open(self.path) as f:
                text = f.read()
            self.faults = [
                {"count": 1, "status": 400, "code": "ThrottlingException", "message": "Rate exceeded", **f}
                for f in (json.loads(text) if text.strip() else [])
            ]
            self.mtime = mtime

    @staticmethod
    def body(environ):
        try:
            n = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            n = 0
        if n <= 0:
            return b""
        data = environ["wsgi.input"].read(n)
        environ["wsgi.input"] = io.BytesIO(data)  # moto reads it again
        return data

    @staticmethod
    def action(environ, body):
        """(protocol, action) of a request: the X-Amz-Target header (JSON) or Action= (query)."""
        target = environ.get("HTTP_X_AMZ_TARGET")
        if target:
            return "json", target.rsplit(".", 1)[-1]
        params = parse_qs(environ.get("QUERY_STRING", ""))
        if "form-urlencoded" in (environ.get("CONTENT_TYPE") or ""):
            params.update(parse_qs(body.decode("utf-8", "replace")))
        return "query", (params.get("Action") or [None])[0]

    def take(self, action):
        with self.lock:
            self.reload()
            self.calls[action] = self.calls.get(action, 0) + 1
            for f in self.faults:
                if f["count"] != 0 and f["action"] in ("*", action):
                    f["count"] -= 1
                    return dict(f)
        return None

    @staticmethod
    def error(start_response, protocol, fault):
        status, code, message = int(fault["status"]), str(fault["code"]), str(fault["message"])
        request_id = str(uuid.uuid4())
        if protocol == "json":
            body = json.dumps({"__type": code, "message": message}).encode()
            headers = [("Content-Type", "application/x-amz-json-1.1"), ("X-Amzn-ErrorType", code)]
        else:
            kind = "Receiver" if status >= 500 else "Sender"
            body = (
                f'<ErrorResponse xmlns="http://rds.amazonaws.com/doc/2014-10-31/"><Error><Type>{kind}</Type>'
                f"<Code>{code}</Code><Message>{message}</Message></Error><RequestId>{request_id}</RequestId></ErrorResponse>"
            ).encode()
            headers = [("Content-Type", "text/xml")]
        headers += [("x-amzn-RequestId", request_id), ("Content-Length", str(len(body)))]
        start_response(f"{status} Injected", headers)
        return [body]

    def __call__(self, environ, start_response):
        if environ.get("PATH_INFO") == CONTROL_PATH:
            with self.lock:
                self.reload()
                out = json.dumps({"faults": self.faults, "calls": self.calls}).encode()
            start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(out)))])
            return [out]
        protocol, action = self.action(environ, self.body(environ))
        if action:
            fault = self.take(action)
            if fault:
                return self.error(start_response, protocol, fault)
        return self.app(environ, start_response)


def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    patch_dms_timestamps()
    patch_aws_behaviour()
    if int(os.environ.get("DMF_MOTO_CREATING_READS", "0")) > 0:
        patch_slow_creation(int(os.environ["DMF_MOTO_CREATING_READS"]))

    from moto.server import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import make_server

    app = Faults(DomainDispatcherApplication(create_backend_app), os.environ.get("DMF_MOTO_FAULTS"))
    server = make_server("127.0.0.1", port, app, threaded=True)

    def stop(*_):
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    threading.Thread(target=lambda: (sys.stdin.read(), stop()), daemon=True).start()
    print(f"port {server.server_address[1]}", flush=True)
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
