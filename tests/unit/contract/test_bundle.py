"""The code bundle (contract/bundle.py): deterministic, excluding what it must, limited, and
safe to unpack.

* the same files give the same bytes and hash, whatever the mtimes, modes, owners, creation
  order, umask and absolute path (property-based over random trees too), and pack then
  unpack gives the tree back exactly;
* ``.git``, ``__pycache__``, ``*.pyc``, virtualenvs, the caller's patterns and a root
  ``.gitignore`` are left out, and nothing else is; links inside the tree are copied, links
  out of it are refused by name;
* over a limit, the error names the five largest files and points to images or volumes;
* split/join round-trips, and a chunk fits a Secret with its base64 and metadata;
* unpack refuses every traversal, absolute path, link, special file, duplicate, bomb and
  corrupt or unexpected archive (all built by hand here), naming the member, writing
  nothing;
* importing the module (the worker does, to unpack) loads no third-party package.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import io
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
import tracemalloc
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cerebras_appliance.contract import bundle
from cerebras_appliance.contract.bundle import (
    Bundle,
    BundleError,
    BundleTooLarge,
    UnsafeBundle,
    join,
    pack,
    split,
    unpack,
)

REPO = Path(__file__).resolve().parents[3]

# -- helpers ---------------------------------------------------------------------------------

#: A tree: relative path -> content, or (content, executable).
Tree = Mapping[str, "bytes | tuple[bytes, bool]"]


def write_tree(root: Path, tree: Tree, *, reverse: bool = False, mtime: float = 0.0) -> None:
    """Write ``tree`` under ``root``, in sorted or reverse order, with ``mtime`` when given."""
    root.mkdir(parents=True, exist_ok=True)
    for rel in sorted(tree, reverse=reverse):
        value = tree[rel]
        content, executable = value if isinstance(value, tuple) else (value, False)
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        path.chmod(0o755 if executable else 0o644)
        if mtime:
            os.utime(path, (mtime, mtime))


def names(data: bytes) -> list[str]:
    """The member names of a bundle, in archive order, read with plain tarfile."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return tar.getnames()


def read_tree(root: Path) -> dict[str, tuple[str, bytes, int]]:
    """Everything under ``root``: relative path -> (kind, content, permission bits)."""
    out: dict[str, tuple[str, bytes, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            path = Path(dirpath, name)
            out[str(path.relative_to(root))] = ("dir", b"", path.lstat().st_mode & 0o7777)
        for name in filenames:
            path = Path(dirpath, name)
            info = path.lstat()
            assert not path.is_symlink()
            out[str(path.relative_to(root))] = ("file", path.read_bytes(), info.st_mode & 0o7777)
    return out


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def private_dir(parent: Path, name: str = "dest") -> Path:
    path = parent / name
    parent.mkdir(parents=True, exist_ok=True)
    path.mkdir(mode=0o700)
    path.chmod(0o700)
    return path


SAMPLE: Tree = {
    "main.py": (b"import mylib\nprint(mylib.VALUE)\n", True),
    "mylib/__init__.py": b"VALUE = 42\n",
    "mylib/sub/deep.py": b"X = 1\n",
    "conf/settings.yaml": b"a: 1\n",
    "r\u00e9sum\u00e9 \u4e2d\u6587.txt": b"unicode names go in a pax header\n",
    "a" * 120 + "/" + "b" * 120 + ".py": b"a long path too\n",
}

# -- determinism -----------------------------------------------------------------------------


def test_the_same_files_pack_to_the_same_bytes_whatever_mtimes_modes_owners_order_umask_and_path(
    tmp_path: Path,
) -> None:
    first, second = tmp_path / "one", tmp_path / "elsewhere" / "two"
    with umask(0o022):
        write_tree(first, SAMPLE, mtime=1_000_000_000)
    with umask(0o077):  # files 0o600 where the first tree has 0o644; dirs 0o700
        second.mkdir(parents=True)
        for rel in sorted(SAMPLE, reverse=True):  # another creation (so listing) order
            value = SAMPLE[rel]
            content, executable = value if isinstance(value, tuple) else (value, False)
            path = second / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
            path.chmod(0o700 if executable else 0o600)
            os.utime(path, (2_000_000_000, 2_000_000_000))
    if os.geteuid() == 0:  # other owners, where we may
        for path in second.rglob("*"):
            os.lchown(path, 1234, 5678)
    assert (first / "main.py").stat().st_mtime != (second / "main.py").stat().st_mtime

    a, b = pack(first), pack(second)

    assert a.data == b.data
    assert a.sha256 == b.sha256
    assert a.sha256.startswith("sha256:") and len(a.sha256) == len("sha256:") + 64
    assert (a.files, a.size) == (
        len(SAMPLE),
        sum(len(v if isinstance(v, bytes) else v[0]) for v in SAMPLE.values()),
    )
    with tarfile.open(fileobj=io.BytesIO(a.data), mode="r:gz") as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == sorted(m.name for m in members)
    for member in members:
        assert (member.mtime, member.uid, member.gid, member.uname, member.gname) == (
            0,
            0,
            0,
            "",
            "",
        ), member.name
        assert member.mode == (
            0o755 if member.isdir() or member.name.endswith("main.py") else 0o644
        )


def test_a_changed_byte_name_or_executable_bit_changes_the_hash(tmp_path: Path) -> None:
    write_tree(tmp_path / "base", SAMPLE)
    base = pack(tmp_path / "base").sha256
    changes: dict[str, Callable[[Path], None]] = {
        "byte": lambda root: (root / "mylib/__init__.py").write_bytes(b"VALUE = 43\n"),
        "name": lambda root: (root / "conf/settings.yaml").rename(root / "conf/settings.yml"),
        "exec bit": lambda root: (root / "mylib/__init__.py").chmod(0o755),
        "empty dir": lambda root: (root / "outputs").mkdir(),
    }
    for what, change in changes.items():
        root = tmp_path / what.replace(" ", "-")
        write_tree(root, SAMPLE)
        change(root)
        assert pack(root).sha256 != base, what


def test_the_gzip_header_carries_no_time_name_or_machine(tmp_path: Path) -> None:
    write_tree(tmp_path / "w", SAMPLE)
    data = pack(tmp_path / "w").data
    # magic, deflate, no flags (so no file name), mtime 0, no extra flags, OS "unknown"
    assert data[:10] == b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"


def test_the_hash_is_of_the_content_so_another_compression_of_it_verifies(
    tmp_path: Path,
) -> None:
    write_tree(tmp_path / "w", SAMPLE)
    packed = pack(tmp_path / "w")
    recompressed = gzip.compress(gzip.decompress(packed.data), compresslevel=1, mtime=12345)
    assert recompressed != packed.data
    assert bundle.digest(recompressed) == bundle.digest(packed.data) == packed.sha256
    unpack(recompressed, private_dir(tmp_path), expected_sha256=packed.sha256)


_segment = st.text(alphabet="abcxyz019_-\u00e9", min_size=1, max_size=8)
_trees = st.dictionaries(
    st.lists(_segment, min_size=1, max_size=4).map("/".join),
    st.tuples(st.binary(max_size=300), st.booleans()),
    min_size=1,
    max_size=12,
).filter(lambda tree: not any(other.startswith(rel + "/") for rel in tree for other in tree))


@settings(max_examples=40, deadline=None)
@given(tree=_trees, mtime=st.integers(min_value=1, max_value=2**31 - 1))
def test_any_tree_packs_to_the_same_bytes_twice_and_unpacks_to_itself(
    tree: dict[str, tuple[bytes, bool]], mtime: int
) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        write_tree(root / "a", tree)
        write_tree(root / "b", tree, reverse=True, mtime=mtime)
        a, b = pack(root / "a"), pack(root / "b")
        assert a.data == b.data and a.sha256 == b.sha256
        dest = private_dir(root)
        unpack(a.data, dest, expected_sha256=a.sha256)
        got = read_tree(dest / "working_dir")
        files = {rel: (content, 0o755 if exe else 0o644) for rel, (content, exe) in tree.items()}
        assert {rel: (c, m) for rel, (kind, c, m) in got.items() if kind == "file"} == files


def test_pack_then_unpack_gives_the_tree_back_exactly(tmp_path: Path) -> None:
    write_tree(tmp_path / "w", SAMPLE)
    (tmp_path / "w" / "outputs").mkdir()  # an empty directory the script writes into
    (tmp_path / "lib").mkdir()
    write_tree(tmp_path / "lib" / "pkg", {"__init__.py": b"P = 1\n", "m.py": b"M = 2\n"})
    (tmp_path / "lib" / "single.py").write_bytes(b"S = 3\n")
    packed = pack(
        tmp_path / "w",
        [tmp_path / "lib" / "pkg", tmp_path / "lib" / "single.py"],
        files={"function.pkl": b"\x80\x05pickled"},
    )
    assert (packed.working_dir, packed.py_modules, packed.generated_files) == (
        True,
        ("pkg", "single"),
        ("function.pkl",),
    )
    dest = private_dir(tmp_path)

    with umask(0o077):  # the worker's umask does not decide the modes
        unpack(packed.data, dest, expected_sha256=packed.sha256)

    assert read_tree(dest / "working_dir") == read_tree(tmp_path / "w")
    assert read_tree(dest / "py_modules") == {
        "pkg": ("dir", b"", 0o755),
        "pkg/__init__.py": ("file", b"P = 1\n", 0o644),
        "pkg/m.py": ("file", b"M = 2\n", 0o644),
        "single.py": ("file", b"S = 3\n", 0o644),
    }
    assert read_tree(dest / "files") == {"function.pkl": ("file", b"\x80\x05pickled", 0o644)}
    assert sorted(p.name for p in dest.iterdir()) == ["files", "py_modules", "working_dir"]
    assert bundle.import_paths(dest) == [dest / "working_dir", dest / "py_modules"]


def test_the_bundle_repr_never_shows_its_content(tmp_path: Path) -> None:
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "secret.py").write_bytes(b"TOKEN = 'hunter2-token'\n")
    packed = pack(tmp_path / "w", files={"f": b"hunter2-generated"})
    assert "hunter2" not in repr(packed) and "data" not in repr(packed)
    assert packed.sha256 in repr(packed)
    assert isinstance(packed, Bundle) and packed.compressed_size == len(packed.data)


# -- excludes --------------------------------------------------------------------------------


def test_git_pycache_pyc_and_virtualenvs_are_left_out_and_nothing_else(tmp_path: Path) -> None:
    root = tmp_path / "w"
    write_tree(
        root,
        {
            "keep.py": b"1",
            ".git/HEAD": b"ref",
            "sub/.git": b"gitdir: ../.git/worktrees/sub",  # a worktree's .git is a file
            "__pycache__/keep.cpython-311.pyc": b"x",
            "pkg/__pycache__/m.cpython-311.pyc": b"x",
            "pkg/m.py": b"2",
            "pkg/stale.pyc": b"x",
            "myenv/pyvenv.cfg": b"home = /usr/bin",
            "myenv/lib/site.py": b"x",
            "pkg/.venv/pyvenv.cfg": b"home = /usr/bin",
            "notenv/cfg.py": b"3",  # a directory without pyvenv.cfg is kept
            ".hidden.py": b"4",
            "sub/x.pyc.txt": b"5",
        },
    )
    assert names(pack(root).data) == [
        "working_dir",
        "working_dir/.hidden.py",
        "working_dir/keep.py",
        "working_dir/notenv",
        "working_dir/notenv/cfg.py",
        "working_dir/pkg",
        "working_dir/pkg/m.py",
        "working_dir/sub",
        "working_dir/sub/x.pyc.txt",
    ]


def test_the_callers_patterns_and_a_root_gitignore_are_honoured_with_gits_rules(
    tmp_path: Path,
) -> None:
    root = tmp_path / "w"
    write_tree(
        root,
        {
            ".gitignore": b"# build output\nbuild/\n*.log\n!keep.log\n/top.txt\n",
            "main.py": b"1",
            "build/out.bin": b"x",
            "src/build/out.bin": b"x",
            "debug.log": b"x",
            "src/keep.log": b"kept by !",
            "top.txt": b"x",
            "src/top.txt": b"anchored pattern: only the root one goes",
            "data/big.csv": b"x",
            "src/table.csv": b"x",
            "notes.md": b"x",
        },
    )
    packed = pack(root, excludes=["*.csv", "notes.md"])
    assert names(packed.data) == [
        "working_dir",
        "working_dir/.gitignore",
        "working_dir/data",  # its only file is excluded; the directory stays, empty
        "working_dir/main.py",
        "working_dir/src",
        "working_dir/src/keep.log",
        "working_dir/src/top.txt",
    ]
    # The caller's patterns come last: they can take back what the .gitignore leaves out.
    assert "working_dir/debug.log" in names(pack(root, excludes=["!debug.log"]).data)
    # Without the .gitignore, its patterns no longer apply (it is what excluded them).
    (root / ".gitignore").unlink()
    assert "working_dir/debug.log" in names(pack(root, excludes=["*.csv"]).data)


def test_the_callers_patterns_apply_to_py_modules_relative_to_each_package(
    tmp_path: Path,
) -> None:
    write_tree(
        tmp_path / "mylib",
        {"__init__.py": b"1", "tests/test_x.py": b"x", "core/tests/t.py": b"y", "a.pyc": b"z"},
    )
    assert names(pack(None, [tmp_path / "mylib"], excludes=["/tests/"]).data) == [
        "py_modules",
        "py_modules/mylib",
        "py_modules/mylib/__init__.py",
        "py_modules/mylib/core",
        "py_modules/mylib/core/tests",
        "py_modules/mylib/core/tests/t.py",
    ]


def test_a_link_inside_the_tree_is_copied_and_one_out_of_it_is_refused_by_name(
    tmp_path: Path,
) -> None:
    root = tmp_path / "w"
    write_tree(root, {"real/data.py": b"D = 1\n", "run.py": (b"print()\n", True)})
    (root / "alias.py").symlink_to("real/data.py")
    (root / "mirror").symlink_to("real", target_is_directory=True)
    (root / "run-link").symlink_to("run.py")
    packed = pack(root)
    with tarfile.open(fileobj=io.BytesIO(packed.data), mode="r:gz") as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert all(m.isfile() or m.isdir() for m in members.values())
        alias = tar.extractfile(members["working_dir/alias.py"])
        assert alias is not None and alias.read() == b"D = 1\n"
    assert members["working_dir/mirror"].isdir()
    assert "working_dir/mirror/data.py" in members
    assert members["working_dir/run-link"].mode == 0o755

    outside = tmp_path / "outside.txt"
    outside.write_text("not in the tree")
    cases = {  # name, how it links, what the error says
        "out": (lambda link: link.symlink_to(outside), "points outside"),
        "dangling": (lambda link: link.symlink_to(root / "missing"), "cannot be followed"),
        "loop": (
            lambda link: link.symlink_to(root, target_is_directory=True),
            "leads back into a directory it is in",
        ),
    }
    for name, (make, says) in cases.items():
        link = root / "real" / f"{name}-link"
        make(link)
        with pytest.raises(BundleError, match=f"^symlink {re.escape(str(link))} .*{says}"):
            pack(root)
        link.unlink()
    assert pack(root).sha256 == packed.sha256
    # An excluded link is never followed, so it is not an error.
    (root / "data-link").symlink_to(outside)
    assert pack(root, excludes=["data-link"]).sha256 == packed.sha256


def test_special_files_in_the_tree_are_skipped(tmp_path: Path) -> None:
    root = tmp_path / "w"
    write_tree(root, {"a.py": b"1"})
    os.mkfifo(root / "fifo")  # reading it would block: it must not be opened
    assert names(pack(root).data) == ["working_dir", "working_dir/a.py"]


def test_py_modules_with_one_name_or_that_cannot_be_imported_are_errors_naming_them(
    tmp_path: Path,
) -> None:
    write_tree(tmp_path / "one" / "mylib", {"__init__.py": b""})
    write_tree(tmp_path / "two" / "mylib", {"__init__.py": b""})
    write_tree(tmp_path / "three", {"mylib.py": b"", "my-lib.py": b"", "data.txt": b""})
    first, second = tmp_path / "one" / "mylib", tmp_path / "two" / "mylib"
    with pytest.raises(BundleError, match=f"{first}.*{second}"):
        pack(None, [first, second])
    with pytest.raises(BundleError, match=r"mylib\.py"):
        pack(None, [first, tmp_path / "three" / "mylib.py"])
    with pytest.raises(BundleError, match="my-lib"):
        pack(None, [tmp_path / "three" / "my-lib.py"])
    with pytest.raises(BundleError, match=r"data\.txt"):
        pack(None, [tmp_path / "three" / "data.txt"])
    with pytest.raises(BundleError, match="nowhere"):
        pack(tmp_path / "nowhere")
    for bad in ["a/b", "..", ""]:
        with pytest.raises(BundleError):
            pack(None, files={bad: b"x"})


# -- limits ----------------------------------------------------------------------------------


def test_over_the_limit_the_error_names_the_five_largest_files_and_points_to_images_or_volumes(
    tmp_path: Path,
) -> None:
    root = tmp_path / "w"
    sizes = {"f1.bin": 1000, "f2.bin": 2000, "f3.bin": 3000, "f4.bin": 4000, "f5.bin": 5000}
    sizes |= {"f6.bin": 6000, "data/f7.bin": 70_000}
    write_tree(root, {rel: os.urandom(size) for rel, size in sizes.items()})  # incompressible
    with pytest.raises(BundleTooLarge) as caught:
        pack(root, limit=50_000)
    message = str(caught.value)
    assert isinstance(caught.value, ValueError)
    expected = [root / "data/f7.bin", root / "f6.bin", root / "f5.bin", root / "f4.bin"]
    expected.append(root / "f3.bin")
    positions = [message.index(str(path)) for path in expected]
    assert positions == sorted(positions), message
    assert "68.4 KiB" in message and "5.9 KiB" in message
    assert str(root / "f2.bin") not in message and str(root / "f1.bin") not in message
    assert "image" in message and "volume" in message
    assert caught.value.largest[0] == (str(root / "data/f7.bin"), 70_000)
    assert len(caught.value.largest) == 5
    # Under the limit, the same tree packs.
    assert pack(root, limit=200_000).files == 7


def test_the_default_limit_is_at_least_8_mib_compressed_and_each_limit_is_enforced_by_pack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert bundle.MAX_BUNDLE_BYTES >= 8 * 1024 * 1024
    assert bundle.MAX_UNPACKED_BYTES >= bundle.MAX_BUNDLE_BYTES
    root = tmp_path / "w"
    write_tree(root, {f"m{i}.py": bytes(1000) for i in range(10)})
    packed = pack(root)
    assert len(packed.data) < 1000  # zeros compress: only the uncompressed limit catches them
    monkeypatch.setattr(bundle, "MAX_UNPACKED_BYTES", 9_999)
    with pytest.raises(BundleTooLarge, match="uncompressed"):
        pack(root)
    # The files (10,000 bytes) fit; with headers, padding and the end blocks the tar does not.
    monkeypatch.setattr(bundle, "MAX_UNPACKED_BYTES", 16_000)
    with pytest.raises(BundleTooLarge, match="uncompressed"):
        pack(root)
    monkeypatch.undo()
    monkeypatch.setattr(bundle, "MAX_ENTRIES", 10)  # 10 files and the working_dir directory
    with pytest.raises(BundleTooLarge, match="11 files and directories"):
        pack(root)


# -- split and join --------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=5000), chunk=st.integers(min_value=1, max_value=6000))
def test_split_then_join_gives_the_data_back_in_chunks_no_larger_than_asked(
    data: bytes, chunk: int
) -> None:
    pieces = split(data, chunk)
    assert join(pieces) == data
    assert all(0 < len(piece) <= chunk for piece in pieces)
    assert len(pieces) == -(-len(data) // chunk)


def test_split_refuses_a_chunk_size_that_is_not_positive() -> None:
    for chunk in (0, -1):
        with pytest.raises(ValueError, match="positive"):
            split(b"abc", chunk)


def test_a_chunk_fits_a_secret_with_its_base64_and_room_for_metadata() -> None:
    secret_limit = 1024 * 1024
    encoded = len(base64.b64encode(bytes(bundle.SECRET_CHUNK_BYTES)))
    assert encoded + 256 * 1024 <= secret_limit
    assert bundle.MAX_CHUNKS * bundle.SECRET_CHUNK_BYTES >= bundle.MAX_BUNDLE_BYTES
    assert len(split(bytes(bundle.MAX_BUNDLE_BYTES), bundle.SECRET_CHUNK_BYTES)) == (
        bundle.MAX_CHUNKS
    )


# -- unpack refuses --------------------------------------------------------------------------


def member(
    name: str,
    kind: bytes = tarfile.REGTYPE,
    content: bytes | None = None,
    *,
    linkname: str = "",
    size: int | None = None,
) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    if content is not None:
        info.size = len(content) if size is None else size
    elif size is not None:
        info.size = size
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    return info, content


def archive(
    *members: tuple[tarfile.TarInfo, bytes | None], tar_format: int = tarfile.PAX_FORMAT
) -> bytes:
    """A gzipped tar of exactly these members, as a hostile client could make it."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tar_format) as tar:
        for info, content in members:
            tar.addfile(info, io.BytesIO(content) if content is not None else None)
    return gzip.compress(raw.getvalue())


OK = member("working_dir/ok.py", content=b"print('ok')\n")
HOSTILE: dict[str, tuple[bytes, str]] = {
    "absolute path": (archive(OK, member("/etc/cron.d/x", content=b"x")), "/etc/cron.d/x"),
    "absolute path in the layout": (
        archive(OK, member("/working_dir/x", content=b"x")),
        "/working_dir/x",
    ),
    "parent traversal": (archive(OK, member("../escaped", content=b"x")), "../escaped"),
    "traversal inside the layout": (
        archive(OK, member("working_dir/../../escaped", content=b"x")),
        "working_dir/../../escaped",
    ),
    "deep traversal": (
        archive(OK, member("working_dir/a/b/../../../../escaped", content=b"x")),
        "working_dir/a/b/../../../../escaped",
    ),
    "dot component": (archive(OK, member("working_dir/./x", content=b"x")), "working_dir/./x"),
    "empty component": (archive(OK, member("working_dir//x", content=b"x")), "working_dir//x"),
    "backslash path": (
        archive(OK, member("working_dir\\..\\escaped", content=b"x")),
        "working_dir\\\\..\\\\escaped",
    ),
    "outside the layout": (archive(OK, member("etc/passwd", content=b"x")), "etc/passwd"),
    "long traversal in a pax header": (
        archive(OK, member("working_dir/" + "a/" * 80 + "../" * 90 + "escaped", content=b"x")),
        "escaped",
    ),
    "gnu long name traversal": (
        archive(
            OK,
            member("working_dir/" + "b" * 120 + "/../../../escaped", content=b"x"),
            tar_format=tarfile.GNU_FORMAT,
        ),
        "escaped",
    ),
    "symlink": (
        archive(OK, member("working_dir/link", tarfile.SYMTYPE, linkname="/etc")),
        "working_dir/link",
    ),
    "symlink then a file through it": (
        archive(
            member("working_dir/link", tarfile.SYMTYPE, linkname="../.."),
            member("working_dir/link/escaped", content=b"x"),
        ),
        "working_dir/link",
    ),
    "relative symlink in the tree": (
        archive(OK, member("working_dir/alias", tarfile.SYMTYPE, linkname="ok.py")),
        "working_dir/alias",
    ),
    "hard link out": (
        archive(OK, member("working_dir/hard", tarfile.LNKTYPE, linkname="/etc/passwd")),
        "working_dir/hard",
    ),
    "hard link in the tree": (
        archive(OK, member("working_dir/hard", tarfile.LNKTYPE, linkname="working_dir/ok.py")),
        "working_dir/hard",
    ),
    "character device": (
        archive(OK, member("working_dir/null", tarfile.CHRTYPE)),
        "working_dir/null",
    ),
    "block device": (archive(OK, member("working_dir/sda", tarfile.BLKTYPE)), "working_dir/sda"),
    "fifo": (archive(OK, member("working_dir/pipe", tarfile.FIFOTYPE)), "working_dir/pipe"),
    "contiguous file": (
        archive(OK, member("working_dir/cont", tarfile.CONTTYPE, content=b"x")),
        "working_dir/cont",
    ),
    "unknown type": (
        archive(OK, member("working_dir/odd", b"Z", content=b"x")),
        "working_dir/odd",
    ),
    "duplicate file": (
        archive(OK, member("working_dir/ok.py", content=b"second copy\n")),
        "working_dir/ok.py",
    ),
    "a file and a directory of one name": (
        archive(OK, member("working_dir/ok.py", tarfile.DIRTYPE)),
        "working_dir/ok.py",
    ),
    "a directory with data": (
        archive(OK, member("working_dir/d", tarfile.DIRTYPE, content=b"hidden")),
        "working_dir/d",
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_unpack_refuses_a_hostile_member_by_name_and_writes_nothing(
    case: str, tmp_path: Path
) -> None:
    data, shown = HOSTILE[case]
    dest = private_dir(tmp_path / "deep" / "er")
    with pytest.raises(UnsafeBundle, match=re.escape(shown)):
        unpack(data, dest)
    assert list(dest.iterdir()) == []
    assert not any(p.name == "escaped" for p in tmp_path.rglob("*"))
    with pytest.raises(UnsafeBundle):
        bundle.digest(data)


def test_unpack_accepts_a_hand_made_archive_without_directory_entries(tmp_path: Path) -> None:
    """The refusals above are of the hostile member, not of hand-made archives as such."""
    data = archive(OK, member("working_dir/a/b/c.py", content=b"c"))
    dest = private_dir(tmp_path)
    unpack(data, dest)
    assert (dest / "working_dir/ok.py").read_bytes() == b"print('ok')\n"
    assert (dest / "working_dir/a/b/c.py").read_bytes() == b"c"


def test_unpack_checks_the_expected_hash_before_writing_anything(tmp_path: Path) -> None:
    write_tree(tmp_path / "w", SAMPLE)
    packed = pack(tmp_path / "w")
    dest = private_dir(tmp_path)
    other = "sha256:" + "0" * 64
    with pytest.raises(UnsafeBundle, match=other):
        unpack(packed.data, dest, expected_sha256=other)
    assert list(dest.iterdir()) == []
    unpack(packed.data, dest, expected_sha256=packed.sha256)
    assert (dest / "working_dir/main.py").is_file()


def corrupt(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]


@pytest.mark.parametrize(
    "damage",
    [corrupt, lambda data: data[:-9], lambda data: data + b"trailing", lambda data: data[:5]],
    ids=["flipped byte", "truncated", "trailing bytes", "only a header"],
)
def test_unpack_refuses_a_damaged_bundle_and_writes_nothing(
    damage: Callable[[bytes], bytes], tmp_path: Path
) -> None:
    write_tree(tmp_path / "w", {"a.py": os.urandom(4000).hex().encode()})
    data = pack(tmp_path / "w").data
    dest = private_dir(tmp_path)
    with pytest.raises(UnsafeBundle):
        unpack(damage(data), dest)
    assert list(dest.iterdir()) == []


def test_unpack_refuses_a_zip_archive_and_plain_bytes(tmp_path: Path) -> None:
    raw = io.BytesIO()
    with zipfile.ZipFile(raw, "w") as archive_:
        archive_.writestr("working_dir/x.py", "x")
    for data in (raw.getvalue(), b"", b"just bytes"):
        dest = private_dir(tmp_path, f"dest{len(data)}")
        with pytest.raises(UnsafeBundle):
            unpack(data, dest)
        assert list(dest.iterdir()) == []


def test_unpack_wants_an_existing_empty_private_directory(tmp_path: Path) -> None:
    write_tree(tmp_path / "w", {"a.py": b"1"})
    data = pack(tmp_path / "w").data
    with pytest.raises(BundleError, match="not an existing directory"):
        unpack(data, tmp_path / "missing")
    full = private_dir(tmp_path, "full")
    (full / "x").write_text("x")
    with pytest.raises(BundleError, match="not empty"):
        unpack(data, full)
    shared = private_dir(tmp_path, "shared")
    shared.chmod(0o777)
    with pytest.raises(BundleError, match="writable by others"):
        unpack(data, shared)
    link = tmp_path / "link"
    link.symlink_to(private_dir(tmp_path, "target"))
    with pytest.raises(BundleError, match="not an existing directory"):
        unpack(data, link)


# -- bombs -----------------------------------------------------------------------------------


def gzip_of_tar_then_zeros(tar_bytes: bytes, zero_mib: int) -> bytes:
    """A gzip stream of ``tar_bytes`` then ``zero_mib`` MiB of zeros, a few KiB per GiB:
    after a full flush deflate restarts, so one compressed MiB of zeros can be repeated.
    The trailer's CRC is wrong: a reader that checks limits never gets there."""
    deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    head = deflate.compress(tar_bytes) + deflate.flush(zlib.Z_FULL_FLUSH)
    deflate.compress(bytes(1 << 20))
    deflate.flush(zlib.Z_FULL_FLUSH)
    unit = deflate.compress(bytes(1 << 20)) + deflate.flush(zlib.Z_FULL_FLUSH)
    tail = deflate.flush()
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + head + unit * zero_mib + tail + bytes(8)


def tar_header_of(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    return info.tobuf(tarfile.PAX_FORMAT)


def test_unpack_refuses_a_4_gib_bomb_while_inflating_in_bounded_time_and_memory(
    tmp_path: Path,
) -> None:
    honest_tar = io.BytesIO()
    with tarfile.open(fileobj=honest_tar, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info, content = OK
        tar.addfile(info, io.BytesIO(content or b""))
    bombs = {  # what each is, the bomb, what the refusal says
        # a small valid archive, then 4 GiB of zeros after its end
        "after the archive": (
            gzip_of_tar_then_zeros(honest_tar.getvalue(), 4096),
            "inflates to more than 64.0 MiB",
        ),
        # a member that says it holds 4 GiB, and does: refused on its header
        "one huge member": (
            gzip_of_tar_then_zeros(tar_header_of("working_dir/big", 4 << 30), 4096),
            "'working_dir/big': the files would be more than 64.0 MiB",
        ),
        # a member that says it is small, then 4 GiB of zeros (end-of-archive blocks)
        "lying member": (
            gzip_of_tar_then_zeros(tar_header_of("working_dir/x", 10) + bytes(512), 4096),
            "inflates to more than 64.0 MiB",
        ),
    }
    for what, (data, refusal) in bombs.items():
        assert len(data) < 5 * 1024 * 1024
        dest = private_dir(tmp_path, what.replace(" ", "-"))
        tracemalloc.start()
        started = time.monotonic()
        try:
            with pytest.raises(UnsafeBundle, match=re.escape(refusal)):
                unpack(data, dest)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        elapsed = time.monotonic() - started
        assert elapsed < 20, f"{what}: {elapsed:.1f}s: inflated past the limit?"
        assert peak < 16 * 1024 * 1024, f"{what}: peak {peak} bytes: not streaming?"
        assert list(dest.iterdir()) == []


def test_unpack_refuses_many_members_or_a_total_over_the_limits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    many = archive(*(member(f"working_dir/f{i}", content=b"x") for i in range(30)))
    big = archive(*(member(f"working_dir/f{i}", content=bytes(4096)) for i in range(30)))
    dest = private_dir(tmp_path)
    unpack(many, dest)  # both are fine under the real limits
    monkeypatch.setattr(bundle, "MAX_ENTRIES", 20)
    with pytest.raises(UnsafeBundle, match="more than 20 entries"):
        unpack(many, private_dir(tmp_path, "d2"))
    monkeypatch.setattr(bundle, "MAX_UNPACKED_BYTES", 64 * 1024)
    with pytest.raises(UnsafeBundle, match=r"inflates to more than 64\.0 KiB"):
        unpack(big, private_dir(tmp_path, "d3"))  # 30 * (4096 + 512) > 64 KiB
    assert list((tmp_path / "d2").iterdir()) == list((tmp_path / "d3").iterdir()) == []


# -- the worker can import it ----------------------------------------------------------------


def test_importing_and_unpacking_loads_no_third_party_package(tmp_path: Path) -> None:
    write_tree(tmp_path / "w", SAMPLE)
    (tmp_path / "bundle.tgz").write_bytes(pack(tmp_path / "w").data)
    dest = private_dir(tmp_path)
    # What the interpreter loaded before (site's .pth hooks) is not the module's doing.
    script = f"""
import sys
before = set(sys.modules)
from pathlib import Path
from cerebras_appliance.contract import bundle
bundle.unpack(Path({str(tmp_path / "bundle.tgz")!r}).read_bytes(), Path({str(dest)!r}))
top = {{name.split(".")[0] for name in set(sys.modules) - before}}
print(sorted(top - set(sys.stdlib_module_names) - {{"cerebras_appliance"}}))
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]", result.stdout + result.stderr
    assert (dest / "working_dir" / "main.py").is_file()


def test_a_known_tree_has_a_known_hash_on_every_machine_and_python(tmp_path: Path) -> None:
    """The hash is a protocol value (status, caches): the canonical format must not drift.
    (Checked the same on CPython 3.9 to 3.13, 3.11.2 included.) A change here is a format
    change: old workers and clients would disagree on the hash of the same files."""
    root = tmp_path / "tree"
    write_tree(
        root,
        {
            "main.py": (b"print(1)\n", True),
            "r\u00e9sum\u00e9 \u4e2d.txt": b"u\n",
            "a" * 120 + "/" + "b" * 120 + ".py": b"long\n",
            "pkg/__init__.py": b"",
            "empty/.keep": b"",
        },
    )
    packed = pack(root, files={"fn.pkl": b"x" * 1000})
    assert packed.sha256 == (
        "sha256:7a524ef877204a6650e9ec7660d4a61345f7f8787f7eb34969ff8f9ade56e2da"
    )
