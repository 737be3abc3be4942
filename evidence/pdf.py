"""A small text-only PDF writer that streams page by page.

PDF libraries (fpdf2, reportlab) keep every page in memory until the document is written; an
export of 100,000 items would hold them all. This writer emits each page as soon as it is
full and keeps only the byte offsets of its objects (a few integers a page) for the
cross-reference table at the end. It uses the standard Type 1 fonts every PDF reader has
(Helvetica, Courier), so nothing is embedded; text outside Windows-1252 is shown as "?".
"""

from __future__ import annotations

import zlib
from typing import BinaryIO

WIDTH, HEIGHT = 842, 595  # A4 landscape, in points
MARGIN = 36
FONTS = {"F1": "Helvetica", "F2": "Courier", "F3": "Helvetica-Bold"}
CHAR_WIDTH = {"F2": 0.6, "F1": 0.5, "F3": 0.55}  # em; exact for Courier, a safe average otherwise


def _escape(text: str) -> bytes:
    raw = text.encode("cp1252", errors="replace")
    return raw.replace(b"\\", b"\\\\").replace(b"(", b"\\(").replace(b")", b"\\)").replace(b"\r", b"")


class StreamingPdf:
    def __init__(self, fh: BinaryIO, title: str):
        self.fh = fh
        self.pos = 0
        self.offsets: dict[int, int] = {}
        self.page_ids: list[int] = []
        self.lines: list[tuple[str, int, str, float]] = []  # (font, size, text, indent)
        self.y = HEIGHT - MARGIN
        self._write(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
        self._object(1, b"<< /Type /Catalog /Pages 2 0 R >>")
        self.font_ids = {}
        next_id = 3
        for alias, name in FONTS.items():
            self._object(
                next_id, f"<< /Type /Font /Subtype /Type1 /BaseFont /{name} /Encoding /WinAnsiEncoding >>".encode()
            )
            self.font_ids[alias] = next_id
            next_id += 1
        self._object(next_id, b"<< /Title (" + _escape(title) + b") /Producer (RMM evidence export) >>")
        self.info_id = next_id
        self.next_id = next_id + 1
        fonts = " ".join(f"/{alias} {oid} 0 R" for alias, oid in self.font_ids.items())
        self.resources = f"<< /Font << {fonts} >> >>".encode()

    def _write(self, data: bytes) -> None:
        self.fh.write(data)
        self.pos += len(data)

    def _object(self, oid: int, body: bytes) -> None:
        self.offsets[oid] = self.pos
        self._write(f"{oid} 0 obj\n".encode() + body + b"\nendobj\n")

    def line(self, text: str = "", *, font: str = "F2", size: int = 7, gap: float = 1.3) -> None:
        """Add a line, wrapped to the page width; a new page starts when this one is full."""
        width = int((WIDTH - 2 * MARGIN) / (size * CHAR_WIDTH[font]))
        chunks = [text[i : i + width] for i in range(0, len(text), width)] or [""]
        for n, chunk in enumerate(chunks):
            step = size * gap
            if self.y - step < MARGIN:
                self.new_page()
            self.y -= step
            self.lines.append((font, size, ("    " if n else "") + chunk, self.y))

    def heading(self, text: str) -> None:
        self.line("", size=6)
        self.line(text, font="F3", size=11)

    def new_page(self) -> None:
        if not self.lines:
            return
        ops = []
        for font, size, text, y in self.lines:
            ops.append(
                b"BT /" + font.encode() + f" {size} Tf {MARGIN} {y:.1f} Td (".encode() + _escape(text) + b") Tj ET"
            )
        stream = zlib.compress(b"\n".join(ops))
        content_id, page_id = self.next_id, self.next_id + 1
        self.next_id += 2
        self._object(
            content_id,
            f"<< /Length {len(stream)} /Filter /FlateDecode >>\nstream\n".encode() + stream + b"\nendstream",
        )
        self._object(
            page_id,
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {WIDTH} {HEIGHT}] ".encode()
            + f"/Contents {content_id} 0 R /Resources ".encode()
            + self.resources
            + b" >>",
        )
        self.page_ids.append(page_id)
        self.lines = []
        self.y = HEIGHT - MARGIN

    def close(self) -> None:
        self.new_page()
        if not self.page_ids:  # a PDF needs at least one page
            self.line("")
            self.new_page()
        kids = " ".join(f"{pid} 0 R" for pid in self.page_ids)
        self._object(2, f"<< /Type /Pages /Kids [{kids}] /Count {len(self.page_ids)} >>".encode())
        xref_at = self.pos
        size = self.next_id
        rows = [b"0000000000 65535 f \n"]
        rows += [f"{self.offsets[oid]:010d} 00000 n \n".encode() for oid in range(1, size)]
        self._write(f"xref\n0 {size}\n".encode() + b"".join(rows))
        self._write(
            f"trailer\n<< /Size {size} /Root 1 0 R /Info {self.info_id} 0 R >>\nstartxref\n{xref_at}\n%%EOF\n".encode()
        )
