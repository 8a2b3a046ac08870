"""A project's files as a .zip, streamed: GET /api/projects/{pid}/archive.

Each file is read on its own (one read, as /files/{path} does), deflated and written out
before the next is read, so the answer holds one file in memory at a time, however many the
project has. zipfile writes to a stream it cannot seek with a data descriptor after each
entry (PKWARE APPNOTE 4.3.9), which every unzip reads. The files are those the database
holds when each is read: a generation running meanwhile may have replaced some of them.
"""

from __future__ import annotations

import io
import time
import zipfile
from typing import Final

from aiohttp import hdrs, web

from service.storage.interface import Storage

CONTENT_TYPE: Final = "application/zip"
# -rw-r--r--, in the high half of external_attr (the Unix mode, as Info-ZIP writes it).
FILE_MODE: Final = 0o100644 << 16
# The DOS date in a zip entry starts in 1980.
ZIP_EPOCH: Final = (1980, 1, 1, 0, 0, 0)


class _Sink(io.RawIOBase):
    """What zipfile writes to: kept until taken, never seekable."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: object) -> int:
        chunk = bytes(data)  # type: ignore[call-overload]
        self._parts.append(chunk)
        return len(chunk)

    def take(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        return data


def _entry(path: str, updated_at_ms: int) -> zipfile.ZipInfo:
    stamp = time.gmtime(updated_at_ms / 1000)[:6]
    info = zipfile.ZipInfo(path, date_time=max(stamp, ZIP_EPOCH))
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = FILE_MODE
    return info


async def stream_archive(
    request: web.Request, storage: Storage, project_id: str
) -> web.StreamResponse:
    """Answer with the project's files as <project id>.zip, written as each file is read
    (the id: a file name as it is, where a project's name would need cleaning)."""
    response = web.StreamResponse(
        headers={
            hdrs.CONTENT_TYPE: CONTENT_TYPE,
            hdrs.CONTENT_DISPOSITION: f'attachment; filename="{project_id}.zip"',
            hdrs.CACHE_CONTROL: "no-store",
        }
    )
    await response.prepare(request)
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for listed in await storage.files(project_id):
            file = await storage.file(project_id, listed.path)
            if file is None:  # removed since the list was read
                continue
            archive.writestr(_entry(file.path, file.updated_at), file.content)
            await response.write(sink.take())
    await response.write(sink.take())  # the central directory, written by close
    await response.write_eof()
    return response
