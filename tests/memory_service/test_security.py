"""TLS (server certificates, optional client certificates), bearer tokens checked by a server
interceptor, and AdminService on its own address behind the admin token: every rejection path
against a real server, and the happy paths through MemoryClient."""
import subprocess
import time

import grpc
import numpy as np
import pytest

from model_client import MemoryClient, MemoryServiceError
from protos import pb2

from ..served import Server, expected_rows, fill_store

LAYER, TABLE = 2, "layer2"


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    for ca in ("ca", "other-ca"):
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{ca}.key", "-out", f"{ca}.pem",
                "-days", "2", "-subj", f"/CN={ca}", cwd=d)
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", f"/CN={name}", cwd=d)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{name}.pem", "-days", "2", "-extfile", "san.ext", cwd=d)
    (d / "token").write_text("read-secret\n")
    (d / "admin-token").write_text("admin-secret\n")
    return d


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("sec") / "db"
    fill_store(path, dtypes={LAYER: "bfloat16"})
    return path


def wait_up(make_client, timeout=30):
    deadline = time.monotonic() + timeout
    while True:
        try:
            with make_client() as client:
                client.describe(TABLE)
                return
        except MemoryServiceError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_tls_tokens_and_a_separate_admin_port(pki, store_path):
    server = Server(store_path, "--tls-cert", str(pki / "server.pem"), "--tls-key", str(pki / "server.key"),
                    "--token-file", str(pki / "token"), "--admin-token-file", str(pki / "admin-token"),
                    "--admin-port", "0", workers=1)
    try:
        secure = dict(tls_ca=str(pki / "ca.pem"), shared_memory=False, retries=0, timeout_s=5)
        wait_up(lambda: MemoryClient(server.target, token="read-secret", **secure))
        ids = np.arange(0, 500, 3)
        with MemoryClient(server.target, token="read-secret", **secure) as client:
            assert np.array_equal(client.lookup(TABLE, ids), expected_rows(LAYER)[ids])
        for token, code in ((None, "UNAUTHENTICATED"), ("wrong", "UNAUTHENTICATED")):
            with MemoryClient(server.target, token=token, **secure) as client, \
                    pytest.raises(MemoryServiceError, match=code):
                client.lookup(TABLE, ids)
        with MemoryClient(server.target, token="admin-secret", **secure) as client:   # admin may read
            assert np.array_equal(client.lookup(TABLE, ids), expected_rows(LAYER)[ids])
        for bad in (dict(tls_ca=None), dict(tls_ca=str(pki / "other-ca.pem"))):     # no TLS, wrong CA
            with MemoryClient(server.target, token="read-secret", **{**secure, **bad}) as client, \
                    pytest.raises(MemoryServiceError, match="UNAVAILABLE"):
                client.lookup(TABLE, ids)

        admin_port = next(e["admin_port"] for e in server.logs() if e.get("msg") == "serving")
        credentials = grpc.ssl_channel_credentials((pki / "ca.pem").read_bytes())
        drop = pb2.DropVersionRequest(table="no-such-table", version=1).SerializeToString()

        def admin_call(port, token):
            with grpc.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
                metadata = [("authorization", f"Bearer {token}")] if token else None
                try:
                    channel.unary_unary("/engram_memory.v1.AdminService/DropVersion")(drop, timeout=5, metadata=metadata)
                except grpc.RpcError as e:
                    return e.code()
        assert admin_call(admin_port, None) == grpc.StatusCode.UNAUTHENTICATED
        assert admin_call(admin_port, "read-secret") == grpc.StatusCode.PERMISSION_DENIED
        assert admin_call(admin_port, "admin-secret") == grpc.StatusCode.NOT_FOUND      # let in; no table
        assert admin_call(server.port, "admin-secret") == grpc.StatusCode.PERMISSION_DENIED  # not on the main port
    finally:
        server.stop()


def test_mutual_tls_requires_a_client_certificate(pki, store_path):
    server = Server(store_path, "--tls-cert", str(pki / "server.pem"), "--tls-key", str(pki / "server.key"),
                    "--tls-client-ca", str(pki / "ca.pem"), workers=1)
    try:
        mutual = dict(tls_ca=str(pki / "ca.pem"), tls_cert=str(pki / "client.pem"), tls_key=str(pki / "client.key"),
                      shared_memory=False, retries=0, timeout_s=5)
        wait_up(lambda: MemoryClient(server.target, **mutual))
        with MemoryClient(server.target, **mutual) as client:
            assert client.lookup(TABLE, [1, 2]).shape[0] == 2
        with MemoryClient(server.target, tls_ca=str(pki / "ca.pem"), shared_memory=False, retries=0,
                          timeout_s=5) as client, pytest.raises(MemoryServiceError, match="UNAVAILABLE"):
            client.lookup(TABLE, [1, 2])
    finally:
        server.stop()


def test_bad_security_flags_are_clear_errors(store_path, tmp_path):
    from memory_service.server import ServiceConfig
    with pytest.raises(ValueError, match="--tls-cert and --tls-key go together"):
        ServiceConfig(db=str(store_path), tls_cert="x.pem")
    with pytest.raises(RuntimeError, match="--token-file .*No such file"):
        Server(store_path, "--token-file", str(tmp_path / "missing"), workers=1).wait_serving()
