"""git's pkt-line framing (gitprotocol-common(5)), as the long-running filter protocol uses it.

A packet is a 4-hex-digit length (including those 4 bytes) followed by the payload; ``0000`` is a
flush packet. Payloads are at most ``MAX_PAYLOAD`` bytes.
"""

from __future__ import annotations

from typing import BinaryIO, Iterator

__all__ = ["MAX_PAYLOAD", "PktReader", "PktWriter", "ProtocolError"]

MAX_PAYLOAD = 65516


class ProtocolError(Exception):
    """git sent something the protocol does not allow (or closed the pipe)."""


class PktReader:
    def __init__(self, stream: BinaryIO):
        self.stream = stream

    def _exact(self, n: int) -> bytes:
        data = self.stream.read(n)
        while len(data) < n:
            more = self.stream.read(n - len(data))
            if not more:
                raise ProtocolError(f"pipe closed after {len(data)} of {n} bytes")
            data += more
        return data

    def read_packet(self) -> bytes | None:
        """The next payload, or None for a flush packet. Raises EOFError at a clean end."""
        head = self.stream.read(4)
        if not head:
            raise EOFError
        if len(head) < 4:
            head += self._exact(4 - len(head))
        try:
            length = int(head, 16)
        except ValueError:
            raise ProtocolError(f"bad pkt-line length {head!r}") from None
        if length == 0:
            return None
        if length < 4 or length - 4 > MAX_PAYLOAD:
            raise ProtocolError(f"bad pkt-line length {length}")
        return self._exact(length - 4)

    def read_text_list(self) -> list[str]:
        """Text packets up to the next flush, without their trailing newlines."""
        out = []
        while (packet := self.read_packet()) is not None:
            out.append(packet.decode("utf-8").rstrip("\n"))
        return out

    def read_keyvalues(self) -> dict[str, str]:
        return dict(line.split("=", 1) for line in self.read_text_list())

    def iter_content(self) -> Iterator[bytes]:
        """Binary payloads up to the next flush."""
        while (packet := self.read_packet()) is not None:
            yield packet


class ContentStream:
    """A file-like ``read(n)`` over the binary packets of one content section."""

    def __init__(self, reader: PktReader):
        self._packets = reader.iter_content()
        self._buffer = memoryview(b"")
        self.done = False

    def _fill(self) -> bool:
        """Make the buffer non-empty from the next packet; False at the end of the content."""
        while not self._buffer:
            if self.done:
                return False
            try:
                self._buffer = memoryview(next(self._packets))
            except StopIteration:
                self.done = True
                return False
        return True

    def read(self, n: int = -1) -> bytes:
        parts, want = [], n
        while want != 0 and self._fill():
            take = len(self._buffer) if want < 0 else min(want, len(self._buffer))
            parts.append(self._buffer[:take])
            self._buffer = self._buffer[take:]
            if want > 0:
                want -= take
        return b"".join(parts)

    def readinto_exact(self, buffer: bytearray | memoryview) -> int:
        view, filled = memoryview(buffer), 0
        while filled < len(view) and self._fill():
            take = min(len(view) - filled, len(self._buffer))
            view[filled:filled + take] = self._buffer[:take]
            self._buffer = self._buffer[take:]
            filled += take
        return filled

    def drain(self) -> int:
        total = len(self._buffer)
        self._buffer = memoryview(b"")
        if not self.done:
            for packet in self._packets:
                total += len(packet)
            self.done = True
        return total


class PktWriter:
    def __init__(self, stream: BinaryIO):
        self.stream = stream

    def packet(self, payload: bytes) -> None:
        self.stream.write(b"%04x" % (len(payload) + 4))
        self.stream.write(payload)

    def text(self, line: str) -> None:
        self.packet(line.encode("utf-8") + b"\n")

    def flush(self) -> None:
        self.stream.write(b"0000")
        self.stream.flush()

    def content(self, data) -> None:
        """``data`` as binary packets, framed into one buffer per call (one write, not two per
        64 KiB packet: a 1 GB checkpoint is 16k packets)."""
        view = memoryview(data).cast("B")
        framed = bytearray()
        for start in range(0, len(view), MAX_PAYLOAD):
            piece = view[start:start + MAX_PAYLOAD]
            framed += b"%04x" % (len(piece) + 4)
            framed += piece
        self.stream.write(framed)
