"""Admin writes need an admin credential, as an attacker on the network or on the host tries them:
a second process without a token, with the read token, or as another user gets nothing written and
nothing dropped. Closed by default: without --admin-token-file AdminService is only on the local
unix socket (mode 0600); a non-loopback address needs a token or an explicit --insecure."""
import json
import os
import stat
import subprocess
import sys

import numpy as np
import pytest

from core.store import TableStore
from model_client import MemoryClient

from ..served import EXE, Server, expected_rows, fill_store
from .test_attack_segments import ROOT

LAYER, TABLE = 2, "layer2"

# The attacker: replace layer2's rows with a forged version and drop it, over `target`.
FORGE = r"""
import json, sys, grpc, numpy as np
from protos import pb2
target, token, manifest = sys.argv[1], sys.argv[2], sys.argv[3]
channel = grpc.insecure_channel(target)
md = [("authorization", token)] if token else None
def call(method, request, kind="unary"):
    path = "/engram_memory.v1.AdminService/" + method
    try:
        if kind == "stream":
            channel.stream_unary(path)(iter([request.SerializeToString()]), timeout=10, metadata=md)
        else:
            channel.unary_unary(path)(request.SerializeToString(), timeout=10, metadata=md)
        return "OK"
    except grpc.RpcError as e:
        return e.code().name
m = json.loads(manifest)
out = {"create": call("CreateVersion", pb2.CreateVersionRequest(table="layer2", manifest_json=manifest)),
       "write": call("WriteRows", pb2.WriteRowsRequest(table="layer2", version=2, start_row=0,
                     rows=bytes(m["row_bytes"] * m["num_rows"])), "stream"),
       "publish": call("Publish", pb2.PublishRequest(table="layer2", version=2)),
       "drop": call("DropVersion", pb2.DropVersionRequest(table="layer2", version=1, force=True))}
print(json.dumps(out))
"""


def forge(target: str, token: str, manifest_json: str) -> dict:
    out = subprocess.run([sys.executable, "-c", FORGE, target, token, manifest_json], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def connect_as(user: int, path) -> int:
    """errno of connecting to unix socket `path` from a child process running as `user` (0: connected)."""
    import socket
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.setgid(user)
            os.setuid(user)
            socket.socket(socket.AF_UNIX).connect(str(path))
        except OSError as e:
            code = e.errno or 255
        os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


@pytest.fixture(scope="module")
def secrets_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tokens")
    (d / "read").write_text("read-secret\n")
    (d / "admin").write_text("admin-secret\n")
    return d


def forged_manifest(db) -> str:
    store = TableStore(db, readonly=True)
    m = store.manifest(TABLE)
    store.close()
    m.source, m.version, m.status, m.checksum = "forged", 0, "loading", ""  # copies the config
    return m.to_json()


def untouched(db, target, token=None) -> None:
    store = TableStore(db, readonly=True)
    try:
        assert [v.version for v in store.manifests(TABLE)] == [1] and store.current_version(TABLE) == 1
    finally:
        store.close()
    with MemoryClient(target, token=token) as client:
        ids = np.arange(0, 3000, 11)
        assert np.array_equal(client.lookup(TABLE, ids), expected_rows(LAYER)[ids])


def test_no_admin_call_without_an_admin_credential(tmp_path, secrets_dir):
    db = tmp_path / "db"
    fill_store(db, dtypes={LAYER: "bfloat16"})
    manifest = forged_manifest(db)
    server = Server(db, workers=2)                                      # the defaults: no tokens at all
    try:
        server.wait_serving()
        report = forge(server.target, "", manifest)
        assert set(report.values()) == {"PERMISSION_DENIED"}, report
        untouched(db, server.target)
        sock = db / "admin.sock"
        st = os.stat(sock)
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.getuid()
        if os.getuid() == 0:                                            # another user on the host
            import errno
            assert connect_as(65534, sock) == errno.EACCES              # cannot even connect
            assert connect_as(0, sock) == 0
    finally:
        server.stop()

    # only a read token: it reads, it never administers (found: it could drop tables)
    server = Server(db, "--token-file", str(secrets_dir / "read"), workers=1)
    try:
        server.wait_serving()
        for token in ("Bearer read-secret", "bearer read-secret", ""):
            report = forge(server.target, token, manifest)
            assert set(report.values()) == {"PERMISSION_DENIED"}, (token, report)
        untouched(db, server.target, token="read-secret")
    finally:
        server.stop()

    # both tokens: admin calls on the data port need the admin one
    server = Server(db, "--token-file", str(secrets_dir / "read"), "--admin-token-file", str(secrets_dir / "admin"),
                    workers=1)
    try:
        server.wait_serving()
        assert set(forge(server.target, "Bearer read-secret", manifest).values()) == {"PERMISSION_DENIED"}
        assert set(forge(server.target, "Bearer wrong", manifest).values()) == {"UNAUTHENTICATED"}
        assert set(forge(f"unix:{db / 'admin.sock'}", "", manifest).values()) == {"UNAUTHENTICATED"}
        untouched(db, server.target, token="read-secret")
        assert forge(server.target, "BEARER admin-secret", manifest)["create"] == "OK"  # scheme: any case
    finally:
        server.stop()


def test_a_naive_network_deployment_stays_closed(tmp_path, secrets_dir):
    from memory_service.server import ServiceConfig
    db = tmp_path / "db"
    fill_store(db, dtypes={LAYER: "bfloat16"})
    out = subprocess.run([EXE, "serve", "--db", str(db), "--host", "0.0.0.0"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--insecure" in out.stderr and "--token-file" in out.stderr
    for ok in (dict(token_file=str(secrets_dir / "read")), dict(insecure=True), dict(host="::1"),
               dict(host="localhost")):
        ServiceConfig(db=str(db), **{"host": "0.0.0.0", **ok})          # accepted
    with pytest.raises(ValueError, match="--admin-port needs --admin-token-file"):
        ServiceConfig(db=str(db), admin_port=0)
    out = subprocess.run([EXE, "serve", "--db", str(db), "--token-file", str(secrets_dir / "read"),
                          "--admin-token-file", str(secrets_dir / "read")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "hold the same token" in out.stderr   # the read token would administer
    (db / "admin.sock").unlink(missing_ok=True)
    (db / "admin.sock").write_text("not a socket")                     # never replaced or followed
    out = subprocess.run([EXE, "serve", "--db", str(db), "--port", "0", "--metrics-port", "0", "--workers", "1"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "exists and is not a socket" in out.stderr
    assert (db / "admin.sock").read_text() == "not a socket"
