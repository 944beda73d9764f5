"""Archive unpacking: formats, names, links, traversal and bombs (no database needed)."""

import io
import os
import random
import stat
import zipfile
from pathlib import Path

import pytest

from uploads.archives import (
    ArchiveBudget,
    ArchiveError,
    ArchiveLimitExceeded,
    ArchiveLimits,
    archive_kind,
    expand_rar,
    expand_zip,
    safe_relative_path,
)
from uploads.tests.helpers import rar_fixture

LIMITS = ArchiveLimits(max_total_bytes=10**9, max_ratio=100, max_entries=1000)


def zip_bytes(entries, **kwargs) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", **kwargs) as archive:
        for name, data in entries:
            archive.writestr(name, data)
    return buffer.getvalue()


def budget_for(size: int, limits: ArchiveLimits = LIMITS) -> ArchiveBudget:
    """The budget of an upload that is this one archive of ``size`` bytes."""
    budget = ArchiveBudget(limits=limits)
    budget.add_received(size)
    return budget


def unzip(data: bytes, dest: Path, limits: ArchiveLimits = LIMITS, budget=None):
    dest.mkdir(parents=True, exist_ok=True)
    return expand_zip(
        stream=io.BytesIO(data), dest=dest, budget=budget or budget_for(len(data), limits)
    )


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() or p.is_symlink()}


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a/b.dcm", "a/b.dcm"),
        ("./a//b.dcm", "a/b.dcm"),
        ("../evil", None),
        ("a/../../evil", None),
        ("/etc/passwd", None),
        ("C:\\Windows\\evil", None),
        ("c:/evil", None),
        ("a\\b\\c.dcm", "a/b/c.dcm"),
        ("", None),
    ],
)
def test_safe_relative_path(name, expected):
    assert safe_relative_path(name) == expected


def test_it_unpacks_nested_folders_stored_and_deflated(tmp_path):
    data = zip_bytes(
        [("CD/DICOM/IM1", b"x" * 100), ("CD/DICOM/IM2", b"y" * 50)],
        compression=zipfile.ZIP_DEFLATED,
    )
    result = unzip(data, tmp_path)
    assert files_under(tmp_path) == {"CD/DICOM/IM1", "CD/DICOM/IM2"}
    assert (tmp_path / "CD/DICOM/IM1").read_bytes() == b"x" * 100
    assert result.total_bytes == 150


def test_it_keeps_non_ascii_names_in_utf8_and_cp437(tmp_path):
    utf8 = zip_bytes([("Bilder/Röntgen ü.dcm", b"1")])
    assert files_under(tmp_path / "u" if unzip(utf8, tmp_path / "u") else tmp_path) == {
        "Bilder/Röntgen ü.dcm"
    }
    # A CP437 name (no UTF-8 flag), as old Windows tools write it.
    info = zipfile.ZipInfo("x")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(info, b"2")
    raw = buffer.getvalue().replace(b"x", "é".encode("cp437"))
    unzip(raw, tmp_path / "c")
    assert files_under(tmp_path / "c") == {"é"}


def test_it_refuses_zip_entries_outside_the_work_dir(tmp_path):
    dest = tmp_path / "dest"
    dest.mkdir()
    data = zip_bytes(
        [("../evil.txt", b"no"), ("/abs.txt", b"no"), ("C:/drive.txt", b"no"), ("ok.txt", b"yes")]
    )
    result = unzip(data, dest)
    assert files_under(tmp_path) == {"dest/ok.txt"}
    assert {name for name, _ in result.skipped} == {"../evil.txt", "/abs.txt", "C:/drive.txt"}


def test_zip_symlinks_are_skipped_and_never_created(tmp_path):
    link = zipfile.ZipInfo("link")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    data = zip_bytes([(link, "/etc/passwd"), ("file.txt", b"ok")])
    result = unzip(data, tmp_path)
    assert files_under(tmp_path) == {"file.txt"}
    assert result.skipped == [("link", "a link, not a file (links are never followed)")]


def test_zip_bomb_is_stopped_by_the_ratio_limit(tmp_path):
    data = zip_bytes([("zeros.bin", b"\0" * 50_000_000)], compression=zipfile.ZIP_DEFLATED)
    with pytest.raises(ArchiveError) as caught:
        unzip(data, tmp_path)
    assert caught.value.code == "archive_ratio_exceeded"
    assert sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file()) < 20_000_000


def test_total_size_and_entry_count_limits(tmp_path):
    data = zip_bytes([(f"f{i}", os.urandom(1000)) for i in range(20)])
    with pytest.raises(ArchiveError) as caught:
        unzip(
            data,
            tmp_path / "a",
            ArchiveLimits(max_total_bytes=5000, max_ratio=100, max_entries=1000),
        )
    assert caught.value.code == "archive_too_large"
    with pytest.raises(ArchiveError) as caught:
        unzip(
            data,
            tmp_path / "b",
            ArchiveLimits(max_total_bytes=10**9, max_ratio=100, max_entries=10),
        )
    assert caught.value.code == "archive_too_many_entries"


def test_password_protected_and_corrupt_zips_have_their_own_codes(tmp_path):
    data = bytearray(zip_bytes([("a.txt", b"secret")]))
    data[6] |= 0x1  # the encryption flag in the local header...
    central = data.rfind(b"PK\x01\x02")
    data[central + 8] |= 0x1  # ...and in the central directory
    with pytest.raises(ArchiveError) as caught:
        unzip(bytes(data), tmp_path / "p")
    assert caught.value.code == "archive_encrypted"
    with pytest.raises(ArchiveError) as caught:
        unzip(b"PK\x03\x04" + os.urandom(200), tmp_path / "c")
    assert caught.value.code == "archive_corrupt"


def test_zip64_archive_is_read(tmp_path):
    buffer = io.BytesIO()
    with (
        zipfile.ZipFile(buffer, "w", allowZip64=True) as archive,
        archive.open("big.bin", "w", force_zip64=True) as entry,
    ):
        entry.write(b"z" * 1000)
    unzip(buffer.getvalue(), tmp_path)
    assert (tmp_path / "big.bin").stat().st_size == 1000


def rar(name: str, dest: Path):
    path = rar_fixture(name)
    with open(path, "rb") as stream:
        kind = archive_kind(stream.read(16))
        stream.seek(0)
        return expand_rar(
            stream=stream, dest=dest, budget=budget_for(path.stat().st_size), version=kind
        )


@pytest.mark.parametrize("name", ["rar3-subdirs.rar", "rar5-subdirs.rar"])
def test_rar_subdirs_unpack_with_non_ascii_names(name, tmp_path):
    rar(name, tmp_path)
    assert files_under(tmp_path) == {
        "sub/dir1/file1.txt",
        "sub/dir2/file2.txt",
        "sub/with space/long fn.txt",
        "sub/üȵĩöḋè/file.txt",
    }


@pytest.mark.parametrize("name", ["rar3-symlink-unix.rar", "rar5-symlink-unix.rar"])
def test_rar_symlinks_are_skipped_and_listed(name, tmp_path):
    result = rar(name, tmp_path)
    assert files_under(tmp_path) == {"data.txt"}
    assert sorted(n for n, _ in result.skipped) == ["data_link", "random_link"]
    assert not any(p.is_symlink() for p in tmp_path.rglob("*"))


def test_rar_link_traversal_refuses_the_whole_archive(tmp_path):
    with pytest.raises(ArchiveError) as caught:
        rar("rar5-evil-symlink-traversal.rar", tmp_path)
    assert caught.value.code == "unsafe_archive"
    assert files_under(tmp_path) == set()
    assert not (tmp_path.parent / "pwned.txt").exists()


def test_rar5_solid_unpacks(tmp_path):
    rar("rar5-solid.rar", tmp_path)
    assert files_under(tmp_path) == {"stest1.txt", "stest2.txt"}


def test_rar3_solid_fails_with_an_actionable_error(tmp_path):
    with pytest.raises(ArchiveError) as caught:
        rar("rar3-solid.rar", tmp_path)
    assert caught.value.code == "archive_unsupported"
    assert "ZIP" in caught.value.hint
    assert files_under(tmp_path) == set()


def test_rar_hard_links_are_skipped_and_listed(tmp_path):
    result = rar("rar5-hlink.rar", tmp_path)
    assert files_under(tmp_path) == {"stest1.txt"}
    assert sorted(n for n, _ in result.skipped) == ["stest2.txt", "stest3.txt"]


def test_password_protected_rar_asks_for_an_unprotected_archive(tmp_path):
    with pytest.raises(ArchiveError) as caught:
        rar("rar5-psw.rar", tmp_path)
    assert caught.value.code == "archive_encrypted"
    assert "without a password" in caught.value.hint


def nested_outer(dest: Path, inner: list[bytes], limits: ArchiveLimits) -> None:
    """Unpack an outer ZIP holding the ``inner`` ZIPs, then each of them, as processing
    does: one budget for the upload, the outer archive's size as what was received."""
    outer = zip_bytes([(f"part{i}.zip", data) for i, data in enumerate(inner)])
    budget = budget_for(len(outer), limits)
    unzip(outer, dest / "outer", budget=budget)
    for i, data in enumerate(inner):
        unzip(data, dest / f"inner{i}", budget=budget)


@pytest.mark.parametrize(
    ("limits", "inner", "code"),
    [
        (
            # 3 x 300 kB stored twice (the inner zips, then their contents): 1.8 MB > 1 MiB.
            ArchiveLimits(max_total_bytes=1024**2, max_ratio=100, max_entries=1000),
            [zip_bytes([("a.bin", random.Random(i).randbytes(300_000))]) for i in range(3)],
            "archive_too_large",
        ),
        (
            # 3 inner zips of 20 entries, plus the 3 entries of the outer one: 63 > 50.
            ArchiveLimits(max_total_bytes=10**9, max_ratio=100, max_entries=50),
            [zip_bytes([(f"f{n}", b"x") for n in range(20)]) for _ in range(3)],
            "archive_too_many_entries",
        ),
        (
            # 3 inner zips of 6 MiB of zeros: each stays under the 8 MiB the ratio is
            # judged from; together 18 MiB out of about 20 kB received.
            ArchiveLimits(max_total_bytes=10**9, max_ratio=100, max_entries=1000),
            [
                zip_bytes([("z.bin", b"\0" * 6 * 1024**2)], compression=zipfile.ZIP_DEFLATED)
                for _ in range(3)
            ],
            "archive_ratio_exceeded",
        ),
    ],
    ids=["expanded bytes", "entries", "ratio"],
)
def test_the_limits_hold_for_all_archives_of_an_upload_together(tmp_path, limits, inner, code):
    # Each archive alone is within the limits...
    for i, data in enumerate(inner):
        unzip(data, tmp_path / f"alone{i}", limits)
    unzip(zip_bytes([(f"part{i}.zip", d) for i, d in enumerate(inner)]), tmp_path / "o", limits)
    # ...the zip of zips is not.
    with pytest.raises(ArchiveLimitExceeded) as caught:
        nested_outer(tmp_path / "nested", inner, limits)
    assert caught.value.code == code
    assert "archives in this upload" in caught.value.message


@pytest.mark.filterwarnings("ignore:Duplicate name")
def test_entries_whose_names_cannot_be_stored_are_skipped_and_the_rest_unpacked(tmp_path):
    long_name = "MUSTERMANN^ERIKA/" + "x" * 300 + ".dcm"
    data = zip_bytes(
        [
            ("MUSTERMANN^ERIKA/IM1", b"1"),
            (long_name, b"2"),
            ("MUSTERMANN^ERIKA/IM1/IM2", b"3"),  # IM1 is a file: it cannot be a folder too
            ("MUSTERMANN^ERIKA/IM1", b"4"),
            ("MUSTERMANN^ERIKA/IM3", b"5"),
        ]
    )
    result = unzip(data, tmp_path)
    assert files_under(tmp_path) == {"MUSTERMANN^ERIKA/IM1", "MUSTERMANN^ERIKA/IM3"}
    assert [reason for _, reason in result.skipped] == [
        "its name is too long to be stored",
        "a file and a folder of the archive share its path",
        "another entry has the same name",
    ]


def test_corrupt_compressed_data_is_a_corrupt_archive_and_names_no_entry(tmp_path):
    data = bytearray(
        zip_bytes(
            [("MUSTERMANN^ERIKA/IM1", random.Random(1).randbytes(3000) * 30)],
            compression=zipfile.ZIP_DEFLATED,
        )
    )
    start = data.index(b"IM1") + 3
    data[start + 10 : start + 1500] = random.Random(2).randbytes(1490)  # zlib.error inside
    with pytest.raises(ArchiveError) as caught:
        unzip(bytes(data), tmp_path)
    assert caught.value.code == "archive_corrupt"
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    assert "MUSTERMANN" not in str(caught.value)
