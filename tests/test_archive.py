"""GET /api/projects/{pid}/archive: the project's files as a .zip, streamed; unpacked, it
is what the database holds."""

from __future__ import annotations

import io
import zipfile

import pytest

from tests.conftest import Genstream

# The archive reads each file's content from the storage (file_contents): both backends.
pytestmark = pytest.mark.backends


async def stored_files(gs: Genstream, project_id: str) -> dict[str, str]:
    listed = (await gs.json("GET", f"/api/projects/{project_id}/files"))["files"]
    files = {}
    for file in listed:
        path = file["path"]
        files[path] = (await gs.json("GET", f"/api/projects/{project_id}/files/{path}"))["content"]
    return files


async def archive(gs: Genstream, project_id: str) -> tuple[dict[str, str], zipfile.ZipFile]:
    async with gs.http.get(f"{gs.url}/api/projects/{project_id}/archive") as response:
        assert response.status == 200
        assert response.content_type == "application/zip"
        assert response.headers["Content-Disposition"] == f'attachment; filename="{project_id}.zip"'
        # Streamed: no length known before the last file is written.
        assert "Content-Length" not in response.headers
        assert response.headers["Transfer-Encoding"] == "chunked"
        body = await response.read()
    unpacked = zipfile.ZipFile(io.BytesIO(body))
    assert unpacked.testzip() is None  # every entry's CRC checks
    return {name: unpacked.read(name).decode() for name in unpacked.namelist()}, unpacked


async def test_the_archive_unpacks_to_the_stored_files(gs: Genstream) -> None:
    project_id = await gs.new_project()
    await gs.wait_generation((await gs.generate(project_id, "a todo api"))["generation"]["id"])
    # A second generation rewrites files: the archive holds their latest versions.
    await gs.wait_generation((await gs.generate(project_id, "add a README"))["generation"]["id"])
    files, unpacked = await archive(gs, project_id)
    assert files == await stored_files(gs, project_id)
    assert len(files) >= 4
    for info in unpacked.infolist():
        assert info.compress_type == zipfile.ZIP_DEFLATED
        assert info.external_attr >> 16 == 0o100644


async def test_an_empty_project_is_an_empty_archive_and_an_unknown_one_a_404(
    gs: Genstream,
) -> None:
    files, _ = await archive(gs, await gs.new_project())
    assert files == {}
    missing = await gs.json("GET", "/api/projects/prj_missing/archive", status=404)
    assert missing["error"]["code"] == "not_found"
