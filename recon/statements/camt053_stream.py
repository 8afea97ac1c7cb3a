"""camt.053 read from a file a chunk at a time (camt053.scan_file): the prolog and
UTF-16 checks of `scan`, and the entries' spans (`camt053._entry_spans`) found one at
a time by a cursor of their own over the file."""

from __future__ import annotations

import codecs
import re
from typing import BinaryIO

from recon.statements import fields as F

NTRY_START = re.compile(rb"<(?:[A-Za-z_][\w.-]*:)?Ntry[\s>]")
NTRY_END = re.compile(rb"</(?:[A-Za-z_][\w.-]*:)?Ntry>")
UTF16 = {b"\xff\xfe": "utf-16", b"\xfe\xff": "utf-16", b"<\0": "utf-16-le", b"\0<": "utf-16-be"}


CHUNK = F.CHUNK  # bytes (or UTF-16 characters) read at a time by scan_file


class Reader:
    """One cursor over `f` (seekable), of its own: chunks of the raw bytes, or, for a
    UTF-16 document, of its text (`text`: as str; else encoded as UTF-8)."""

    def __init__(self, f: BinaryIO, codec: str | None, text: bool = False) -> None:
        self.f, self.off, self.text = f, 0, text
        self.dec = codecs.getincrementaldecoder(codec)() if codec else None
        self.done = False

    def read(self) -> str | bytes:
        if self.done:
            return ""
        self.f.seek(self.off)
        raw = self.f.read(CHUNK)
        self.off += len(raw)
        if self.dec is None:
            self.done = not raw
            return raw
        s = self.dec.decode(raw, final=not raw)
        self.done = not raw
        return s if self.text else s.encode("utf-8")


class Spans:
    """`_entry_spans` one entry at a time, from a `_Reader` of the (UTF-8) bytes: only
    the bytes from the next search position on are held (and an entry's own)."""

    def __init__(self, reader: Reader) -> None:
        self.reader = reader
        self.buf = b""  # the bytes from `base` on
        self.pos = 0  # where the next <Ntry> is looked for, in buf
        self.line = 1  # the line at buf[0] (line ends before it counted)
        self.prev = 0
        self.prev_cr = False  # the byte before buf[0] was \r
        self.phys = 0  # the physical line of the last span, and its first span's index
        self.first = 0
        self.n = 0
        self.eof = False

    def _more(self) -> bool:
        if self.eof:
            return False
        chunk = self.reader.read()
        assert isinstance(chunk, bytes)
        if not chunk:
            self.eof = True
            return False
        self.buf += chunk
        return True

    def _count(self, end: int) -> None:
        """Line ends in buf[:end] (buf starts where they were counted up to), added
        to `line`; buf cut to start at `end`."""
        seg = self.buf[:end]
        if seg:
            n, cr = seg.count(b"\n"), seg.count(b"\r")
            self.line += n + cr - seg.count(b"\r\n") if cr else n
            if self.prev_cr and seg[:1] == b"\n":
                self.line -= 1
            self.prev_cr = seg[-1:] == b"\r"
        self.buf = self.buf[end:]

    def next(self) -> tuple[int, int, int, str] | None:
        """(line number, physical line, index of the first span on that line, raw
        text) of the next <Ntry> of the bytes, or None when there is none."""
        while (m := NTRY_START.search(self.buf, self.pos)) is None:
            cut = self.buf.rfind(b"<", self.pos)  # a tag the chunk cuts keeps its start
            self._count(len(self.buf) if cut < 0 else cut)
            self.pos = 0
            if not self._more():
                return None
        self._count(m.start())
        look = 0
        while (end := NTRY_END.search(self.buf, look)) is None:
            cut = self.buf.rfind(b"<", look)
            look = len(self.buf) if cut < 0 else cut
            if not self._more():
                break
        stop = end.end() if end else len(self.buf)
        raw = self.buf[:stop].decode("utf-8", "replace")
        line = self.line
        self.prev = max(line, self.prev + 1)
        if line != self.phys:
            self.phys, self.first = line, self.n
        self.n += 1
        self.pos = m.end() - m.start()
        return self.prev, line, self.first, raw


def prolog_file(f: BinaryIO, where: F.Where) -> None:
    """`F.xml_prolog` of the file, read a chunk at a time up to the root element."""
    f.seek(0)
    F.xml_prolog_chunks(iter(lambda: f.read(CHUNK), b""), where)


def utf16_file(f: BinaryIO) -> str | None:
    """`_utf16` of the file: its codec when it is a UTF-16 document that decodes."""
    f.seek(0)
    codec = UTF16.get(f.read(2))
    if codec is None or not F.decodes_file(f, codec):
        return None
    return codec
