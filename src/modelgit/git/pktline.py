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

    def read_length(self, eof_ok: bool = False) -> int | None:
        """The payload length of the next packet, None for a flush packet.

        Raises:
            EOFError: the pipe ended before the packet and ``eof_ok`` (a clean end).
            ProtocolError: a bad length, or the pipe ended inside the length.
        """
        head = self.stream.read(4)
        if not head and eof_ok:
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
        return length - 4

    def read_packet(self) -> bytes | None:
        """The next payload, or None for a flush packet. Raises EOFError at a clean end."""
        length = self.read_length(eof_ok=True)
        return None if length is None else self._exact(length)

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
    """A file-like ``read(n)`` over the binary packets of one content section.

    Payload bytes go straight from the pipe into the buffer ``read`` returns (one copy, no
    per-packet objects): only the bytes left in the current packet are tracked.
    """

    def __init__(self, reader: PktReader):
        self._reader = reader
        self._left = 0  # payload bytes of the current packet not read yet
        self.done = False

    def _next_packet(self) -> bool:
        """Start the next packet; False at the flush that ends the content."""
        while not self.done:
            length = self._reader.read_length()
            if length is None:
                self.done = True
            elif length:  # an empty packet (0004) carries nothing: read on
                self._left = length
                return True
        return False

    def readinto_exact(self, buffer: bytearray | memoryview) -> int:
        """Fill ``buffer`` (fewer bytes only at the end of the content); returns the count."""
        view, filled = memoryview(buffer).cast("B"), 0
        stream = self._reader.stream
        while filled < len(view) and (self._left or self._next_packet()):
            take = min(len(view) - filled, self._left)
            got = stream.readinto(view[filled:filled + take])
            if not got:
                raise ProtocolError(f"pipe closed inside a packet ({self._left} bytes missing)")
            filled += got
            self._left -= got
        return filled

    def read(self, n: int = -1) -> bytes | bytearray:
        if n < 0:
            parts = []
            while self._left or self._next_packet():
                parts.append(self._reader._exact(self._left))
                self._left = 0
            return b"".join(parts)
        buffer = bytearray(n)
        filled = self.readinto_exact(buffer)
        if filled < n:
            del buffer[filled:]
        return buffer

    def drain(self) -> int:
        """Skip the rest of the content; returns how many bytes were skipped."""
        total, scratch = 0, memoryview(bytearray(MAX_PAYLOAD))
        while (got := self.readinto_exact(scratch)):
            total += got
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
