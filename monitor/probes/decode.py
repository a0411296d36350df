"""Content-Encoding decoding with a ceiling: a gzip bomb costs at most `limit` bytes.

gzip and deflate (zlib) and br (the Brotli library) are decoded a bounded piece at a
time; what is decoded never passes `limit` (else `body_too_large`). A compressed body
whose framing was complete but whose compressed stream was not (cut short) is
`protocol`: a truncated answer must not pass as a whole one.
An encoding we cannot decode is kept as sent and marked, so a check that reads the
body can say so instead of "body does not contain ...".
"""

from __future__ import annotations

import zlib
from typing import Any

import brotli

from monitor.reasons import Failure, Reason

ACCEPT_ENCODING = "gzip, deflate, br"


class BoundedDecoder:
    """Decodes one body; `feed` pieces as they come, then `finish`."""

    __slots__ = ("_brotli", "_fed", "_first", "_raw_fallback", "_z", "chunks", "encoding", "limit", "size",
                 "undecodable")

    def __init__(self, encoding: str, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self.chunks: list[bytes] = []
        self.encoding = encoding = encoding.strip().lower()
        self.undecodable = False  # an encoding we cannot decode: the bytes are kept as sent
        self._z: Any = None
        self._brotli: Any = None
        self._raw_fallback = False
        self._first = True
        self._fed = False
        if encoding in ("gzip", "x-gzip"):
            self._z = zlib.decompressobj(zlib.MAX_WBITS | 16)
        elif encoding == "deflate":
            self._z = zlib.decompressobj()
            self._raw_fallback = True  # some servers send raw deflate, without the zlib header
        elif encoding == "br":
            self._brotli = brotli.Decompressor()
        elif encoding not in ("", "identity"):
            self.undecodable = True

    def feed(self, data: bytes) -> None:
        self._fed = self._fed or bool(data)
        if self._z is not None:
            try:
                self._inflate(data)
            except zlib.error:
                if not (self._first and self._raw_fallback):
                    raise Failure(Reason.PROTOCOL, f"invalid {self.encoding} body") from None
                self._z = zlib.decompressobj(-zlib.MAX_WBITS)
                self._raw_fallback = False
                try:
                    self._inflate(data)
                except zlib.error:
                    raise Failure(Reason.PROTOCOL, f"invalid {self.encoding} body") from None
            self._first = False
        elif self._brotli is not None:
            self._unbrotli(data)
        else:
            self._append(data)

    def _inflate(self, data: bytes) -> None:
        while data:
            if self._z.eof:  # what follows the stream's end is not body (as httpx and curl)
                return
            self._append(self._z.decompress(data, self.limit - self.size + 1))
            data = self._z.unconsumed_tail

    def _unbrotli(self, data: bytes) -> None:
        d = self._brotli
        try:
            if d.is_finished():
                return
            self._append(d.process(data, output_buffer_limit=self.limit - self.size + 1))
            while not d.can_accept_more_data():  # more output is waiting for the same input
                self._append(d.process(b"", output_buffer_limit=self.limit - self.size + 1))
        except brotli.error:
            raise Failure(Reason.PROTOCOL, "invalid br body") from None

    def _append(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            raise Failure(Reason.BODY_TOO_LARGE, f"body larger than {self.limit} bytes")
        if data:
            self.chunks.append(data)

    def finish(self) -> None:
        """The body ended (its framing said so): its compressed stream must have too."""
        if self._z is not None and self._fed and not self._z.eof:
            raise Failure(Reason.PROTOCOL, f"{self.encoding} body cut short (its stream did not end)")
        if self._brotli is not None and self._fed and not self._brotli.is_finished():
            raise Failure(Reason.PROTOCOL, "br body cut short (its stream did not end)")

    def body(self) -> bytes:
        return b"".join(self.chunks)

    def drain(self) -> bytes:
        """What was decoded since the last drain (for reading a stream as it comes)."""
        data = b"".join(self.chunks)
        self.chunks.clear()
        return data
