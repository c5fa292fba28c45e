"""A second process that attacks a running memory service, for the attack tests.

    python -m tests.attacker SCENARIO '{"target": "127.0.0.1:PORT", ...}'

Each scenario tries one thing the threat model forbids, as a local process of the same or another
user would, and prints one JSON object saying what happened (status codes, counts); the test then
checks that nothing reached the victim. Nothing here is imported by the project's code.
"""
from __future__ import annotations

import array
import ctypes
import fcntl
import json
import os
import secrets
import socket
import sys
import threading
import time

import grpc
import numpy as np

from protos import pb2

LOOKUP = "/engram_memory.v1.MemoryService/Lookup"
REGISTER = "/engram_memory.v1.MemoryService/RegisterSegment"
STREAM = "/engram_memory.v1.MemoryService/StreamLookup"


def code_of(call) -> str:
    try:
        call()
        return "OK"
    except grpc.RpcError as e:
        return e.code().name


def offer_fd(channel, fd: int, timeout: float = 5.0) -> tuple[str, str, bytes]:
    """Hand `fd` (whatever it is) to the server through RegisterSegment, the way a client would:
    (status, details, segment id)."""
    name = "engram-seg-" + secrets.token_hex(16)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind("\0" + name)
    listener.listen(1)
    secret = secrets.token_bytes(32)
    future = channel.unary_unary(REGISTER, request_serializer=pb2.RegisterSegmentRequest.SerializeToString,
                                 response_deserializer=pb2.RegisterSegmentResponse.FromString).future(
        pb2.RegisterSegmentRequest(socket=name, secret=secret), timeout=timeout)
    listener.settimeout(timeout)
    conn, _ = listener.accept()
    conn.recv(32)
    conn.sendmsg([b"\x01"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])
    try:
        answer = future.result()
        result = ("OK", "", bytes(answer.segment))
    except grpc.RpcError as e:
        result = (e.code().name, e.details(), b"")
    offer_fd.tethers.append(conn)  # keep the tether open, as a client would
    listener.close()
    return result


offer_fd.tethers = []


def sealed_memfd(size: int, seals: int = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL,
                 flags: int = 0, allocate: bool = True) -> int:
    """A memfd as a client makes one (allocated, then sealed), or with allocate=False a sparse one,
    which costs its maker nothing."""
    fd = os.memfd_create("engram-rows", os.MFD_ALLOW_SEALING | flags)
    os.ftruncate(fd, size)
    if allocate:
        os.posix_fallocate(fd, 0, size)
    if seals:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    return fd


def lookup(channel, table: str, ids, segment: bytes = b"", offset: int = 0, extra: bytes = b""):
    request = pb2.LookupRequest(table=table, row_ids=np.asarray(ids, "<i8").tobytes(), segment=segment,
                                segment_offset=offset).SerializeToString() + extra
    return channel.unary_unary(LOOKUP)(request, timeout=10)


# ---- scenarios ------------------------------------------------------------------------------------
def hijack(args: dict) -> dict:
    """Try to get rows written into a victim's segment: look for names, connect to the victim's
    handshake sockets, use its (leaked) segment ids, reopen its memfd through /proc."""
    channel = grpc.insecure_channel(args["target"])
    out = {"shm_names": [n for n in os.listdir("/dev/shm") if n.startswith("engram")], "codes": {}}
    # abstract sockets are listable: connect to every engram one and ask for an fd
    names = [line.split()[-1][1:] for line in open("/proc/net/unix").read().splitlines()[1:]
             if line.split()[-1].startswith("@engram-seg-")]
    got_fd = 0
    for name in names:
        try:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(0.5)
            s.connect("\0" + name)
            s.sendall(os.urandom(32))
            _, anc, _, _ = s.recvmsg(1, socket.CMSG_SPACE(4))
            got_fd += bool(anc)
            s.close()
        except OSError:
            pass
    out["handshake_sockets_tried"], out["fds_received"] = len(names), got_fd
    deadline = time.monotonic() + args["seconds"]
    codes = out["codes"]
    while time.monotonic() < deadline:
        for segment in [secrets.token_bytes(16), *map(bytes.fromhex, args["victim_segments"])]:
            try:
                lookup(channel, args["table"], args["ids"], segment=segment)
                codes["OK"] = codes.get("OK", 0) + 1
            except grpc.RpcError as e:
                codes[e.code().name] = codes.get(e.code().name, 0) + 1
    # reopen the victim's memfd (same uid or root can) and hand it over as our own
    reopened = []
    for fd in os.listdir(f"/proc/{args['victim_pid']}/fd"):
        path = f"/proc/{args['victim_pid']}/fd/{fd}"
        try:
            # the victim client's own segments (the victim process may hold other clients' memfds,
            # registered nowhere: same-uid memory, out of scope as ptrace is; RELIABILITY.md)
            if os.readlink(path).startswith("/memfd:engram-rows") and os.stat(path).st_ino in args["victim_inodes"]:
                mine = os.open(path, os.O_RDWR)
                status, details, segment = offer_fd(channel, mine)
                if status == "OK":  # would then write our rows into the victim's memory
                    try:
                        lookup(channel, args["table"], args["ids"], segment=segment)
                        status = "WROTE"
                    except grpc.RpcError as e:
                        status = "REGISTERED:" + e.code().name
                reopened.append(status)
                os.close(mine)
        except OSError:
            pass
    out["reopened"] = reopened
    return out


def bad_fds(args: dict) -> dict:
    """Hand the server fds it must not write into: a file behind a /dev/shm symlink, a /dev/shm
    file, an unsealed memfd, a memfd that can still shrink; and the old named-segment request."""
    channel = grpc.insecure_channel(args["target"])
    out = {}
    link = "/dev/shm/engram-x"
    if os.path.lexists(link):
        os.unlink(link)
    os.symlink(args["victim_file"], link)
    try:  # the removed shm_name/shm_offset fields (5, 6): a name the server would once have opened
        legacy = b"\x2a" + bytes([len("engram-x")]) + b"engram-x" + b"\x30\x00"
        answer = pb2.LookupResponse.FromString(lookup(channel, args["table"], args["ids"], extra=legacy))
        out["legacy_named_segment"] = "rows in the response" if answer.rows and not answer.rows_in_shm else "?"
    except grpc.RpcError as e:
        out["legacy_named_segment"] = e.code().name
    fd = os.open(link, os.O_RDWR)                       # the symlink's target, a regular file
    out["file_via_symlink"] = offer_fd(channel, fd)[:2]
    os.close(fd)
    os.unlink(link)
    shm = os.open("/dev/shm/engram-attacker", os.O_CREAT | os.O_RDWR, 0o600)
    os.ftruncate(shm, 1 << 20)
    out["dev_shm_file"] = offer_fd(channel, shm)[:2]
    os.close(shm)
    os.unlink("/dev/shm/engram-attacker")
    out["unsealed_memfd"] = offer_fd(channel, sealed_memfd(1 << 20, seals=0))[:2]
    out["shrinkable_memfd"] = offer_fd(channel, sealed_memfd(1 << 20, seals=fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL))[:2]
    out["sparse_memfd"] = offer_fd(channel, sealed_memfd(1 << 30, allocate=False))[:2]  # 1 GiB for free
    future_write = getattr(fcntl, "F_SEAL_FUTURE_WRITE", 0x10)
    out["write_sealed_memfd"] = offer_fd(channel, sealed_memfd(1 << 20, seals=fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL
                                                               | future_write))[:2]
    fd = sealed_memfd(1 << 20)
    readonly = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY)
    out["read_only_memfd"] = offer_fd(channel, readonly)[:2]
    try:
        out["hugetlb_memfd"] = offer_fd(channel, sealed_memfd(2 << 20, flags=os.MFD_HUGETLB))[:2]
    except OSError as e:
        out["hugetlb_memfd"] = ["UNAVAILABLE_HERE", e.strerror]
    return out


def shrink(args: dict) -> dict:
    """Register a sealed memfd, then try to shrink it and punch holes in it while the server writes."""
    channel = grpc.insecure_channel(args["target"])
    size = 4 << 20
    fd = sealed_memfd(size)
    status, details, segment = offer_fd(channel, fd)
    out = {"register": status}
    try:
        os.ftruncate(fd, 0)
        out["ftruncate"] = "shrunk"
    except OSError as e:
        out["ftruncate"] = e.strerror
    libc = ctypes.CDLL(None, use_errno=True)
    punch = 0x02 | 0x01  # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
    stop, codes = threading.Event(), {}

    def puncher():
        while not stop.is_set():
            libc.fallocate(fd, punch, ctypes.c_long(0), ctypes.c_long(size))
    threading.Thread(target=puncher, daemon=True).start()
    deadline = time.monotonic() + args["seconds"]
    while time.monotonic() < deadline:
        code = code_of(lambda: lookup(channel, args["table"], args["ids"], segment=segment))
        codes[code] = codes.get(code, 0) + 1
    stop.set()
    out["lookups"] = codes
    return out


def idle_streams(args: dict) -> dict:
    """Open many StreamLookup calls over several connections and leave them idle (or, with slow=True,
    send big requests and never read the answers); hold them for `seconds`."""
    import queue
    calls, held = [], []
    request = pb2.LookupRequest(table=args["table"], row_ids=np.arange(args.get("rows", 1), dtype="<i8").tobytes())
    for c in range(args["connections"]):
        channel = grpc.insecure_channel(args["target"], options=[("grpc.use_local_subchannel_pool", 1)])
        held.append(channel)
        for _ in range(args["streams"] // args["connections"]):
            q: queue.Queue = queue.Queue()
            if args.get("slow"):
                for _ in range(8):
                    q.put(request.SerializeToString())
            call = channel.stream_stream(STREAM)(iter(q.get, None))
            calls.append((call, q))
    time.sleep(args["seconds"])
    ended = {}
    for call, _ in calls:
        code = call.code() if call.done() else None
        ended[code.name if code else "open"] = ended.get(code.name if code else "open", 0) + 1
    for call, q in calls:
        call.cancel()
    return {"streams": len(calls), "ended": ended}


def flip(args: dict) -> dict:
    """Bit rot: flip bytes of a store file in place, behind the server's back."""
    with open(args["file"], "r+b") as f:
        for offset in args["offsets"]:
            f.seek(offset)
            byte = f.read(1)
            f.seek(offset)
            f.write(bytes([byte[0] ^ 0x5A]))
    return {"flipped": len(args["offsets"])}


def truncate(args: dict) -> dict:
    os.truncate(args["file"], args["size"])
    return {"size": os.path.getsize(args["file"])}


def slow_unary(args: dict) -> dict:
    """Ask for big answers with unary Lookups and never read them (stop this process)."""
    import signal
    request = pb2.LookupRequest(table=args["table"], row_ids=np.zeros(args["rows"], "<i8").tobytes())
    channels = [grpc.insecure_channel(args["target"], options=[("grpc.use_local_subchannel_pool", 1),
                                                               ("grpc.max_receive_message_length", 1 << 30)])
                for _ in range(args["connections"])]
    futures = [channels[i % len(channels)].unary_unary(LOOKUP).future(request.SerializeToString(), timeout=600)
               for i in range(args["calls"])]
    time.sleep(1.0)
    print(json.dumps({"sent": len(futures)}), flush=True)
    os.kill(os.getpid(), signal.SIGSTOP)
    return {}


SCENARIOS = {"slow_unary": slow_unary, "flip": flip, "truncate": truncate, "hijack": hijack, "bad_fds": bad_fds, "shrink": shrink, "idle_streams": idle_streams}

if __name__ == "__main__":
    print(json.dumps(SCENARIOS[sys.argv[1]](json.loads(sys.argv[2]))), flush=True)
