import numpy as np
import pytest

from core import wire
from protos import pb2


@pytest.mark.parametrize("n,row_bytes,request_id", [(0, 8, 0), (1, 256, 0), (1000, 42, 7), (3, 160, 2**63)])
def test_hand_encoded_response_parses_as_protobuf(n, row_bytes, request_id):
    rows = np.random.default_rng(n).integers(0, 256, (n, row_bytes), dtype=np.uint8)

    def fill(out):
        assert out.shape == (n, row_bytes) and out.flags.writeable
        out[...] = rows
    data = wire.lookup_response("layer15", 2**40 + 3, row_bytes, n, fill, request_id)
    assert type(data) is bytes
    msg = pb2.LookupResponse.FromString(data)
    assert (msg.table, msg.version, msg.row_bytes, msg.num_rows, msg.request_id) == (
        "layer15", 2**40 + 3, row_bytes, n, request_id)
    assert msg.rows == rows.tobytes()


def test_parser_reads_protobuf_encodings():
    rows = bytes(range(256)) * 3
    msg = pb2.LookupResponse(table="layer1", version=9, row_bytes=96, num_rows=8, rows=rows, request_id=5)
    answer = wire.parse_lookup_response(msg.SerializeToString())
    assert (answer.table, answer.version, answer.row_bytes, answer.num_rows, answer.request_id) == (
        "layer1", 9, 96, 8, 5)
    assert bytes(answer.rows) == rows
    # fields in another order and an unknown field are fine, as in any protobuf parser
    reordered = (b"\x2a" + wire.varint(3) + b"abc" + b"\x10\x05" + b"\x0a\x02t1" + b"\x48\x01" +
                 b"\x52\x01z")
    answer = wire.parse_lookup_response(reordered)
    assert (answer.table, answer.version, bytes(answer.rows)) == ("t1", 5, b"abc")


@pytest.mark.parametrize("data", [b"\x2a\x05ab", b"\x10\xff", b"\x0f"])
def test_truncated_or_bad_encodings_raise(data):
    with pytest.raises(ValueError):
        wire.parse_lookup_response(data)
