"""ZIP archives sent by users: hostile until proven otherwise.

Nothing of an archive reaches the filesystem under a name it chose: each member is read into
memory (at most the single-photo limit) and handed to ``services.job_create`` like an uploaded
photo, which validates it and stores it under a generated name. Before any member is read, the
whole archive is refused when it cannot be what a user means to send:

- too many members, or more uncompressed bytes in all than the limit (read from the central
  directory, whose sizes zipfile then enforces while reading: a member that inflates past its
  declared size fails its CRC check and is rejected);
- a member that inflates more than ``MAX_RATIO`` times (a zip bomb: photos barely compress).

Members are then taken one by one; one that is not a photo (an archive inside the archive, an
encrypted or damaged file, a file over the size limit) is listed with the reason, not fatal.
"""

from __future__ import annotations

import posixpath
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile, UploadedFile

from .uploads import UploadError, describe_bytes

# Photos are compressed already: JPEG members deflate by a few percent, PNG by less. Even an
# uncompressed BMP of a real photo stays under 10:1; zip bombs are 1000:1 and more.
MAX_RATIO = 100
# Below this size a member's ratio is not checked: a small flat image may compress very well.
RATIO_FLOOR_BYTES = 1024 * 1024

# Archives are not opened inside archives, whatever they are called.
ARCHIVE_EXTENSIONS = (".zip", ".7z", ".rar", ".tar", ".gz", ".tgz", ".bz2", ".xz", ".zst", ".jar")
ARCHIVE_MAGIC = (b"PK\x03\x04", b"PK\x05\x06", b"7z\xbc\xaf\x27\x1c", b"Rar!", b"\x1f\x8b",
                 b"BZh", b"\xfd7zXZ\x00", b"\x28\xb5\x2f\xfd")  # fmt: skip
# Folders and the files operating systems add to archives are skipped without a word.
JUNK_NAMES = (".DS_Store", "Thumbs.db", "desktop.ini")


@dataclass(frozen=True)
class Member:
    """One file of the archive: a photo candidate (``upload``) or the reason it is not one."""

    name: str
    upload: UploadedFile | None = None
    rejected: str = ""


def limits() -> dict[str, int]:
    return {
        "max_bytes": settings.SEGWEB["ARCHIVE_MAX_BYTES"],
        "max_members": settings.SEGWEB["ARCHIVE_MAX_MEMBERS"],
        "max_total": settings.SEGWEB["ARCHIVE_MAX_TOTAL_BYTES"],
    }


def open_archive(upload: UploadedFile) -> zipfile.ZipFile:
    """Open an uploaded ZIP after the whole-archive checks; ``UploadError`` saying why not."""
    limit = limits()
    size = upload.size or 0
    if size == 0:
        raise UploadError("The archive is empty.", reason="archive_invalid")
    if size > limit["max_bytes"]:
        raise UploadError(
            f"The archive is {describe_bytes(size)}; the limit is "
            f"{describe_bytes(limit['max_bytes'])}.",
            413,
            reason="archive_too_large",
        )
    upload.seek(0)
    entries = _declared_entry_count(upload)
    if entries is not None and entries > limit["max_members"] * 2:
        # Refused before zipfile reads a central directory of millions of entries into memory.
        raise _too_many(entries, limit["max_members"])
    try:
        archive = zipfile.ZipFile(upload)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise UploadError(
            "This is not a ZIP archive (or it is damaged).", reason="archive_invalid"
        ) from exc
    try:
        _check_whole(archive, limit)
    except BaseException:
        archive.close()
        raise
    return archive


def _too_many(count: int, limit: int) -> UploadError:
    return UploadError(
        f"The archive has {count} files; at most {limit} are accepted in one archive.",
        reason="archive_too_many_files",
    )


def _declared_entry_count(upload: UploadedFile) -> int | None:
    try:
        end = zipfile._EndRecData(upload)  # the end-of-central-directory record only
    except (OSError, ValueError, EOFError):
        return None
    finally:
        upload.seek(0)
    return end[zipfile._ECD_ENTRIES_TOTAL] if end else None


def _check_whole(archive: zipfile.ZipFile, limit: dict[str, int]) -> None:
    files = [info for info in archive.infolist() if not info.is_dir()]
    if len(files) > limit["max_members"]:
        raise _too_many(len(files), limit["max_members"])
    total = sum(info.file_size for info in files)
    if total > limit["max_total"]:
        raise UploadError(
            f"The archive would inflate to {describe_bytes(total)}; the limit is "
            f"{describe_bytes(limit['max_total'])}.",
            413,
            reason="archive_too_large",
        )
    for info in files:
        ratio = info.file_size // max(info.compress_size, 1)
        if info.file_size > RATIO_FLOOR_BYTES and ratio > MAX_RATIO:
            raise UploadError(
                f"{display_name(info.filename)} inflates {ratio} times its compressed size: "
                f"refused as a zip bomb (photos do not compress more than {MAX_RATIO} times).",
                reason="archive_bomb",
            )


def photo_candidates(archive: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    """The members ``members`` will try as photos (not folders, not operating-system junk):
    what the job rate and the quotas count for an archive, before anything is read."""
    return [i for i in archive.infolist() if not i.is_dir() and not _is_junk(i.filename)]


def members(archive: zipfile.ZipFile) -> Iterator[Member]:
    """The archive's files in order, each read into memory only when its turn comes."""
    max_member = settings.SEGWEB["MAX_UPLOAD_BYTES"]
    for info in archive.infolist():
        name = display_name(info.filename)
        if info.is_dir() or _is_junk(info.filename):
            continue
        if info.flag_bits & 0x1:
            yield Member(name, rejected="The file is encrypted; segweb cannot open it.")
            continue
        if _looks_like_archive(info.filename):
            yield Member(name, rejected="Archives inside the archive are not opened.")
            continue
        if info.file_size == 0:
            yield Member(name, rejected="The file is empty.")
            continue
        if info.file_size > max_member:
            yield Member(
                name,
                rejected=f"The file is {describe_bytes(info.file_size)}; "
                f"the limit is {describe_bytes(max_member)}.",
            )
            continue
        try:
            with archive.open(info) as member:
                data = member.read(max_member + 1)
        except NotImplementedError:
            yield Member(name, rejected="The file is compressed with a method segweb cannot read.")
            continue
        except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError):
            yield Member(name, rejected="The file is damaged in the archive.")
            continue
        if data.startswith(ARCHIVE_MAGIC):
            yield Member(name, rejected="Archives inside the archive are not opened.")
            continue
        yield Member(name, upload=SimpleUploadedFile(posixpath.basename(name) or "photo", data))


def display_name(filename: str) -> str:
    """A member's path as data for people (never as a path): printable, at most 255 chars."""
    clean = "".join(ch for ch in filename.replace("\\", "/") if ch.isprintable())
    return clean[-255:] or "unnamed"


def _is_junk(filename: str) -> bool:
    parts = filename.replace("\\", "/").split("/")
    base = parts[-1]
    return "__MACOSX" in parts or base.startswith("._") or base in JUNK_NAMES


def _looks_like_archive(filename: str) -> bool:
    return filename.lower().endswith(ARCHIVE_EXTENSIONS)
