"""What a client and a server process agree on to hand over a shared-memory segment (the server side is
memory_service/segments.py, the client side model_client/shared_arena.py): the abstract socket's
name, the secret's and the id's sizes, the byte that carries the fd, and the status details the
client matches to re-register or fall back to rows in the response."""
import re

SOCKET_PREFIX = "engram-seg-"
SOCKET_NAME = re.compile(r"engram-seg-[0-9a-f]{32}")
SECRET_BYTES = 32
ID_BYTES = 16
HANDED = b"\x01"           # the byte that carries the fd

# The client-side markers (MemoryClient matches them to re-register or fall back).
UNKNOWN = "segment is not registered on this connection"
DISABLED = "this server does not write into shared memory"
UNREACHABLE = "segment socket cannot be reached from this server"
