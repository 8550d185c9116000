"""pkt-line framing: content read across packet boundaries, drained, and refused when broken."""

import io

import pytest

from modelgit.git.pktline import MAX_PAYLOAD, ContentStream, PktReader, PktWriter, ProtocolError


def _framed(payload: bytes, then: bytes = b"0000") -> io.BufferedReader:
    out = io.BytesIO()
    writer = PktWriter(out)
    writer.content(payload)
    out.write(then)
    return io.BufferedReader(io.BytesIO(out.getvalue()), buffer_size=1 << 20)


def test_reads_of_any_size_cross_packet_boundaries():
    payload = bytes(range(256)) * 1000  # 256,000 bytes: four packets
    content = ContentStream(PktReader(_framed(payload)))
    pieces = [content.read(7), content.read(MAX_PAYLOAD + 5), content.read(100_000), content.read(-1)]
    assert b"".join(pieces) == payload
    assert content.read(10) == b"" and content.done


def test_drain_skips_the_rest_and_the_next_request_follows():
    stream = _framed(b"x" * 200_000, then=b"0000" + b"000ecommand=x\n0000")
    reader = PktReader(stream)
    content = ContentStream(reader)
    assert content.read(5) == b"xxxxx"
    assert content.drain() == 199_995
    assert reader.read_keyvalues() == {"command": "x"}


def test_a_pipe_closed_inside_a_packet_is_a_protocol_error():
    data = _framed(b"y" * 1000).read()[:500]
    content = ContentStream(PktReader(io.BufferedReader(io.BytesIO(data))))
    with pytest.raises(ProtocolError, match="closed"):
        content.read(1000)


def test_an_empty_packet_carries_nothing():
    content = ContentStream(PktReader(io.BufferedReader(io.BytesIO(b"0004" + b"0007abc" + b"0000"))))
    assert content.read(-1) == b"abc" and content.done


@pytest.mark.parametrize("head", [b"zzzz", b"0003", b"fff5"])
def test_bad_lengths_are_refused(head):
    content = ContentStream(PktReader(io.BufferedReader(io.BytesIO(head + b"abcd"))))
    with pytest.raises(ProtocolError, match="bad pkt-line length"):
        content.read(4)


def test_content_with_a_peeked_prefix_reads_into_buffers_across_the_join():
    from modelgit.git.filter_process import _Prefixed

    payload = bytes(range(256)) * 1000
    content = ContentStream(PktReader(_framed(payload[10:])))
    stream = _Prefixed(payload[:10], content)
    first, second = bytearray(4), bytearray(MAX_PAYLOAD + 3)
    assert stream.readinto_exact(first) == 4 and bytes(first) == payload[:4]
    assert stream.readinto_exact(second) == len(second) and bytes(second) == payload[4:4 + len(second)]
    rest = bytearray(len(payload))
    assert stream.readinto_exact(rest) == len(payload) - 4 - len(second)
    assert bytes(rest[:len(payload) - 4 - len(second)]) == payload[4 + len(second):]
