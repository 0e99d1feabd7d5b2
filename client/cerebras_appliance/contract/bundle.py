"""The code bundle: the user's ``working_dir``, ``py_modules`` and generated files, as one archive.

``submit()`` captures the user's code at the moment it is called, as it captures the env: the
client :func:`pack`\\ s it, the bundle travels (Secrets on Kubernetes, split by :func:`split`
and put back by :func:`join`; the claim channel to a warm worker; a file for the local
backend), and the worker :func:`unpack`\\ s it into a private directory before the user's code
runs. Editing the files after ``submit()`` changes nothing for that job.

Layout inside the archive (also the layout of the directory :func:`unpack` fills):

* ``working_dir/<relative path>``: the working directory; the worker runs in it, first on
  ``sys.path``;
* ``py_modules/<name>/...`` (a package directory) or ``py_modules/<name>.py`` (a module):
  the worker puts ``py_modules`` on ``sys.path`` and ``PYTHONPATH``;
* ``files/<name>``: content the client generated (a pickled function, for instance).

:func:`import_paths` gives the worker the ``sys.path`` entries in order.

**Format: gzip of a POSIX (pax) tar, not zip.** One compressed stream across all the files
compresses many small ``.py`` files far better than zip's one deflate stream per file (it
matters against the size limit), and it can be checked and extracted in one forward pass
with no seeking. Zip keeps two descriptions of each member (the local header and the
central directory at the end) that a hostile archive can make disagree, and it needs the
whole archive at hand before the first member. Tar names each member's type explicitly,
which is what :func:`unpack` refuses on. The archive is canonical: entries sorted by
name, every directory written (empty ones too: a script may write into an ``outputs/``
it ships empty), mtime 0, uid/gid 0, no user or group names, mode 0o755 for directories
and executable files and 0o644 for every other file; the gzip header is written here,
with mtime 0, no file name and "unknown" as the OS (Python's own ``gzip.compress`` writes
a header that differs between Python versions).

**The hash is of the content, the tar stream, not of the gzip bytes**: ``sha256:<hex>``
of the uncompressed archive. Deflate's output is the same for the same zlib, but not
across zlib builds (zlib-ng, which some distributions ship in zlib's place, can compress
differently), so the content hash is the one that is the same on every machine for the
same files, which is what a cache key and the status need. The gzip stream's own CRC-32 and
length, checked on every read, and this hash, checked before anything is extracted, both
guard the bytes in transit.

**Excludes.** Always left out, at any depth: ``.git`` (a directory, or a worktree's file),
``__pycache__``, ``*.pyc`` and virtualenvs (a directory holding ``pyvenv.cfg``). Then, for
the working directory only, the patterns of a ``.gitignore`` at its root (nested
``.gitignore`` files and those of a repository above it are not read: the root one is what
describes a project, and it is cheap to read), and the caller's ``excludes``, after them
(so ``!name`` in ``excludes`` takes back what the ``.gitignore`` leaves out). Patterns are
gitignore patterns matched against the path relative to the root they are in: the working
directory, or a py_module's own directory. They are matched by ``pathspec``'s
``GitIgnoreSpec``, the field's implementation of git's rules (``!`` re-includes, anchored
``/x``, ``dir/``, ``**``, and git's rule that a file under an excluded directory cannot be
re-included), imported only when there is a pattern to match, so unpacking (the worker)
never needs it. A socket, FIFO or device file in the tree is skipped, as git skips it.

**Symlinks in the source** are followed when their target is inside the same root (the
working directory, or the py_module's directory): the archive holds a copy of the target,
never a link. A link that points outside its root, dangles, or leads back into a directory
it is in is an error that names the link: the bundle never carries what the user did not
put in the tree. The roots themselves (``working_dir``, each py_module) may be links.

**Limits.** :data:`MAX_BUNDLE_BYTES` (8 MiB, compressed) is the documented limit of the
API; above it, or above :data:`MAX_UNPACKED_BYTES` / :data:`MAX_ENTRIES` (below), :func:`pack`
raises :class:`BundleTooLarge`, naming the five largest files and pointing to an image or
a volume for big data. :func:`unpack` refuses an archive over the uncompressed limits
while it reads it, so a decompression bomb costs at most that much work, at most
:data:`IN_MEMORY_BYTES` of memory, and no disk.

**Reading, fast.** A worker unpacks before the user's first line, so that path is short: an
archive that inflates to at most :data:`IN_MEMORY_BYTES` (every real bundle of code) is
inflated once, into memory, its members read and checked and its hash compared, then the
files are written from memory; one in the canonical form is read without importing
``tarfile`` (a reader of exactly the headers :func:`pack` writes, :func:`_canonical_members`;
anything else goes to ``tarfile``, which then decides), and every member goes through the
same checks either way. A larger archive is read twice, streaming, by ``tarfile``.

This module imports only the standard library (``pathspec`` lazily, in :func:`pack`;
``tarfile`` lazily, to pack and to read an archive not in the canonical form): the worker
imports it to unpack, in any image.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import os
import stat
import struct
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, NamedTuple, Protocol

if TYPE_CHECKING:
    import tarfile

# -- limits ----------------------------------------------------------------------------------

MiB = 1024 * 1024
#: The largest compressed bundle :func:`pack` makes: 8 MiB, the documented limit (issue 23).
#: Code, not data: a working directory of sources is rarely more than a few hundred KiB.
MAX_BUNDLE_BYTES = 8 * MiB
#: The largest uncompressed archive (the tar stream: the files' bytes plus 512-byte headers
#: and padding) :func:`pack` makes and :func:`unpack` reads: 64 MiB, 8 times the compressed
#: limit (source code compresses 3 to 6 times). It bounds the disk (often a memory-backed
#: tmpfs) and CPU a decompression bomb can cost a worker.
MAX_UNPACKED_BYTES = 64 * MiB
#: The most entries (files and directories) in a bundle: 10,000. Each costs an inode and a
#: syscall or three on unpack; a real source tree has hundreds.
MAX_ENTRIES = 10_000
#: One chunk of a bundle, one Secret. Budget: a Secret stays under 1 MiB (1,048,576 bytes)
#: all told, counting its data as base64, as it travels in JSON. A 512 KiB (524,288-byte)
#: chunk is 4 * ceil(524288 / 3) = 699,052 bytes of base64, which leaves 349,524 bytes
#: (341 KiB) for the key's name, the metadata, labels, owner references and managed fields:
#: room to spare, even beside a few small keys. (The API server's own limit, 1 MiB of
#: decoded data, is then met by far.)
SECRET_CHUNK_BYTES = 512 * 1024
#: The most chunks (so Secrets) a bundle needs: 8 MiB / 512 KiB = 16.
MAX_CHUNKS = -(-MAX_BUNDLE_BYTES // SECRET_CHUNK_BYTES)

# -- layout ----------------------------------------------------------------------------------

#: The archive's top-level directories (and the directories :func:`unpack` makes in ``dest``).
WORKING_DIR = "working_dir"
PY_MODULES = "py_modules"
FILES = "files"
_TOP_LEVEL = frozenset({WORKING_DIR, PY_MODULES, FILES})

HASH_PREFIX = "sha256:"
#: Deflate level: 4. submit() waits for it: on source trees level 4 deflates about twice as
#: fast as zlib's default 6 for a bundle about 5% larger (level 1: 2.5 times as fast, 20%
#: larger, which would shrink what fits under the limit). Changing it changes the bundle's
#: bytes, never its hash (the hash is of the content).
COMPRESSLEVEL = 4
_FILE_MODE = 0o644
_EXEC_MODE = 0o755
_DIR_MODE = 0o755
_READ = 64 * 1024
#: gzip header: magic, deflate, no flags (no name, no comment), mtime 0, no extra flags,
#: OS 255 ("unknown"), so the bytes do not depend on the machine.
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
_ZEROS = bytes(512)  # tarfile.BLOCKSIZE: padding of a member's content


class BundleError(ValueError):
    """The code cannot be bundled as given, or a bundle cannot be read. Names the path."""


class BundleTooLarge(BundleError):  # noqa: N818  # the API's name: it reads as a sentence
    """The bundle would be over a limit. The message names the largest files."""

    def __init__(self, message: str, largest: Sequence[tuple[str, int]]) -> None:
        super().__init__(message)
        #: The largest files, ``(path, bytes)``, largest first (at most five).
        self.largest = tuple(largest)


class UnsafeBundle(BundleError):  # noqa: N818  # the API's name
    """An archive :func:`unpack` refuses: it names the member and why."""


class Bundle:
    """A packed bundle, immutable. ``data`` is never in the repr: code can hold credentials.

    A plain class with ``__slots__`` rather than a dataclass: the worker imports this module
    on its start path, and ``dataclasses`` (with ``inspect`` and ``ast``) costs a cold worker
    several milliseconds.
    """

    __slots__ = (
        "data",
        "files",
        "generated_files",
        "py_modules",
        "sha256",
        "size",
        "working_dir",
    )

    #: The archive (gzip of a tar), what is stored and sent.
    data: bytes
    #: ``sha256:<hex>`` of the uncompressed archive: the same for the same files anywhere.
    sha256: str
    #: Regular files in the bundle.
    files: int
    #: Their total size in bytes, uncompressed.
    size: int
    #: Whether the bundle has a ``working_dir``.
    working_dir: bool
    #: The py_modules' import names, sorted.
    py_modules: tuple[str, ...]
    #: The names given in ``files=``, sorted.
    generated_files: tuple[str, ...]

    def __init__(
        self,
        data: bytes,
        sha256: str,
        files: int,
        size: int,
        working_dir: bool = False,
        py_modules: tuple[str, ...] = (),
        generated_files: tuple[str, ...] = (),
    ) -> None:
        for name, value in (
            ("data", data),
            ("sha256", sha256),
            ("files", files),
            ("size", size),
            ("working_dir", working_dir),
            ("py_modules", py_modules),
            ("generated_files", generated_files),
        ):
            object.__setattr__(self, name, value)

    def _fields(self) -> tuple[object, ...]:
        return (
            self.data,
            self.sha256,
            self.files,
            self.size,
            self.working_dir,
            self.py_modules,
            self.generated_files,
        )

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"cannot assign to field {name!r}: a Bundle is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete field {name!r}: a Bundle is immutable")

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, Bundle)
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return (
            f"Bundle(sha256={self.sha256!r}, files={self.files!r}, size={self.size!r}, "
            f"working_dir={self.working_dir!r}, py_modules={self.py_modules!r}, "
            f"generated_files={self.generated_files!r})"
        )

    @property
    def compressed_size(self) -> int:
        return len(self.data)


# -- pack ------------------------------------------------------------------------------------


class _Source(NamedTuple):
    """One entry to write: a directory, a file read from ``path``, or generated
    ``content``. ``shown`` names it in errors."""

    name: str
    is_dir: bool
    path: Path | None
    content: bytes | None
    executable: bool
    size: int
    shown: str


_Matcher = Callable[[str], bool]
_NO_FILES: Mapping[str, bytes] = MappingProxyType({})


def pack(
    working_dir: Path | None,
    py_modules: Sequence[Path] = (),
    *,
    files: Mapping[str, bytes] = _NO_FILES,
    excludes: Sequence[str] = (),
    limit: int = MAX_BUNDLE_BYTES,
) -> Bundle:
    """Bundle the code as it is now: the same files give the same bytes and hash.

    ``working_dir``: a directory, or None. ``py_modules``: package directories or ``.py``
    files, each importable under its name (two with one name are an error). ``files``:
    generated content by plain file name. ``excludes``: gitignore patterns (see the module's
    docstring). ``limit``: the largest compressed size, :data:`MAX_BUNDLE_BYTES` by default.

    Raises :class:`BundleTooLarge` over a limit, :class:`BundleError` for a path that cannot
    be bundled (missing, a link out of its tree, a name that is not UTF-8, ...).
    """
    modules = _modules(py_modules)
    sources = _collect(working_dir, modules, files, excludes)
    regular = [s for s in sources if not s.is_dir]
    total = sum(s.size for s in regular)
    if len(sources) > MAX_ENTRIES:
        raise _too_large(f"{len(sources)} files and directories (at most {MAX_ENTRIES})", regular)
    if total > MAX_UNPACKED_BYTES:
        raise _too_large(
            f"{_human(total)} uncompressed (at most {_human(MAX_UNPACKED_BYTES)})", regular
        )
    writer = _GzipWriter(limit)
    try:
        size = _write_tar(sources, writer)
        data, sha256 = writer.finish()
    except _OverflowError as over:
        raise _too_large(over.what, regular) from None
    return Bundle(
        data=data,
        sha256=sha256,
        files=len(regular),
        size=size,
        working_dir=working_dir is not None,
        py_modules=tuple(sorted(modules)),
        generated_files=tuple(sorted(files)),
    )


def _modules(py_modules: Sequence[Path]) -> dict[str, Path]:
    """The py_modules by import name; two with one name are an error naming both."""
    modules: dict[str, Path] = {}
    for module in py_modules:
        name = _module_name(Path(module))
        if name in modules:
            raise BundleError(
                f"two py_modules are both named {name!r}: {modules[name]} and {module}"
            )
        modules[name] = Path(module)
    return modules


def _collect(
    working_dir: Path | None,
    modules: Mapping[str, Path],
    files: Mapping[str, bytes],
    excludes: Sequence[str],
) -> list[_Source]:
    """Every entry of the bundle, sorted by name (the archive's order)."""
    sources: list[_Source] = []
    if working_dir is not None:
        root = Path(working_dir)
        if not root.is_dir():
            raise BundleError(f"working_dir {root} is not a directory")
        matcher = _matcher([*_gitignore_lines(root), *excludes])
        sources.append(_directory(WORKING_DIR))
        sources.extend(_walk(root, WORKING_DIR, matcher))
    if modules:
        sources.append(_directory(PY_MODULES))
        matcher = _matcher(list(excludes))
        for name, module in modules.items():
            if module.is_dir():
                prefix = f"{PY_MODULES}/{name}"
                sources.append(_directory(prefix))
                sources.extend(_walk(module, prefix, matcher))
            else:
                sources.append(_file(f"{PY_MODULES}/{name}.py", module, module.stat()))
    if files:
        sources.append(_directory(FILES))
        for name, content in files.items():
            _check_plain_name(name)
            sources.append(
                _Source(f"{FILES}/{name}", False, None, bytes(content), False, len(content), name)
            )
    sources.sort(key=lambda s: s.name)
    return sources


def _module_name(module: Path) -> str:
    """A package's directory name (a link's own name), or a module's file name less ``.py``."""
    if module.is_dir():
        name = module.name if module.name not in ("", "..") else module.resolve().name
    elif module.is_file() and module.suffix == ".py":
        name = module.stem
    else:
        raise BundleError(f"py_module {module} is neither a package directory nor a .py file")
    if not name.isidentifier():
        raise BundleError(f"py_module {module}: {name!r} cannot be imported (not an identifier)")
    return name


def _check_plain_name(name: str) -> None:
    if not name or name in (".", "..") or "/" in name or "\x00" in name:
        raise BundleError(f"files: {name!r} is not a plain file name")
    _check_utf8(name, name)


def _check_utf8(name: str, shown: object) -> None:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise BundleError(f"{shown}: the name is not UTF-8, so it cannot be bundled") from None


def _directory(name: str) -> _Source:
    return _Source(name, True, None, None, True, 0, name)


def _file(name: str, path: Path, info: os.stat_result) -> _Source:
    executable = bool(info.st_mode & 0o111)
    return _Source(name, False, path, None, executable, info.st_size, str(path))


def _gitignore_lines(root: Path) -> list[str]:
    gitignore = root / ".gitignore"
    if not gitignore.is_file():
        return []
    return gitignore.read_text(encoding="utf-8", errors="replace").splitlines()


def _matcher(patterns: list[str]) -> _Matcher | None:
    """A gitignore matcher of ``patterns`` (paths relative to the root, directories with a
    trailing ``/``), or None when there is nothing to match (pathspec is not imported)."""
    if not any(line.strip() and not line.lstrip().startswith("#") for line in patterns):
        return None
    # Lazy: only pack matches patterns; the worker imports this module to unpack, with
    # nothing but the standard library.
    from pathspec import GitIgnoreSpec  # noqa: PLC0415

    spec = GitIgnoreSpec.from_lines(patterns)
    return spec.match_file


def _always_excluded(path: Path, name: str, is_dir: bool) -> bool:
    if name in (".git", "__pycache__"):
        return True
    if is_dir:
        return (path / "pyvenv.cfg").is_file()
    return name.endswith(".pyc")


def _walk(root: Path, prefix: str, matcher: _Matcher | None) -> list[_Source]:
    """The entries under ``root``, named ``prefix/<relative path>``, excludes applied and
    links inside the root followed (see the module's docstring)."""
    real_root = Path(os.path.realpath(root))
    out: list[_Source] = []

    def follow(path: Path) -> tuple[Path, os.stat_result]:
        target = Path(os.path.realpath(path))
        if target != real_root and real_root not in target.parents:
            raise BundleError(
                f"symlink {path} -> {os.readlink(path)} points outside {root}: copy what it "
                "points to into the tree, or exclude the link"
            )
        try:
            return target, target.stat()
        except OSError as error:
            raise BundleError(
                f"symlink {path} -> {os.readlink(path)} cannot be followed: {error.strerror}"
            ) from None

    def visit(directory: Path, relative: str, active: frozenset[Path]) -> None:
        try:
            entries = list(os.scandir(directory))
        except OSError as error:
            raise BundleError(f"cannot list {directory}: {error.strerror}") from None
        for entry in entries:
            path = Path(entry.path)
            rel = f"{relative}/{entry.name}" if relative else entry.name
            _check_utf8(entry.name, path)
            if entry.is_symlink():
                # An excluded link is not followed (so not refused): git keeps a link as a
                # file entry, so its name and the file patterns decide first.
                by_name = entry.name in (".git", "__pycache__") or entry.name.endswith(".pyc")
                if by_name or (matcher is not None and matcher(rel)):
                    continue
                real, info = follow(path)
            else:
                real, info = path, entry.stat(follow_symlinks=False)
            is_dir = stat.S_ISDIR(info.st_mode)
            if _always_excluded(path, entry.name, is_dir):
                continue
            if matcher is not None and matcher(rel + "/" if is_dir else rel):
                continue
            if is_dir:
                real = Path(os.path.realpath(real))
                if real in active:
                    raise BundleError(f"symlink {path} leads back into a directory it is in")
                out.append(_directory(f"{prefix}/{rel}"))
                visit(path, rel, active | {real})
            elif stat.S_ISREG(info.st_mode):
                out.append(_file(f"{prefix}/{rel}", path, info))
            # Sockets, FIFOs and devices: skipped, as git skips them.

    visit(root, "", frozenset({real_root}))
    return out


class _OverflowError(Exception):
    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


class _GzipWriter:
    """A file-like sink for the tar stream: hashes it, counts it against
    :data:`MAX_UNPACKED_BYTES` and deflates it into a gzip member, raising
    :class:`_OverflowError` as soon as either size is over its limit."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._hash = hashlib.sha256()
        self._crc = 0
        self._raw = 0
        self._deflate = zlib.compressobj(COMPRESSLEVEL, zlib.DEFLATED, -zlib.MAX_WBITS)
        self._out = [_GZIP_HEADER]
        self._compressed = len(_GZIP_HEADER)

    def write(self, chunk: bytes) -> int:
        self._raw += len(chunk)
        if self._raw > MAX_UNPACKED_BYTES:
            raise _OverflowError(f"over {_human(MAX_UNPACKED_BYTES)} uncompressed")
        self._hash.update(chunk)
        self._crc = zlib.crc32(chunk, self._crc)
        self._emit(self._deflate.compress(chunk))
        return len(chunk)

    def _emit(self, out: bytes) -> None:
        self._out.append(out)
        self._compressed += len(out)
        if self._compressed > self._limit:
            raise _OverflowError(f"over {_human(self._limit)} compressed")

    def finish(self) -> tuple[bytes, str]:
        self._emit(self._deflate.flush())
        self._emit(struct.pack("<II", self._crc, self._raw & 0xFFFFFFFF))
        return b"".join(self._out), HASH_PREFIX + self._hash.hexdigest()


def _write_tar(sources: Sequence[_Source], sink: _GzipWriter) -> int:
    """Write the canonical tar of ``sources`` to ``sink``; returns the files' total size.

    The bytes are those of ``tarfile.open(mode="w|", format=PAX_FORMAT, encoding="utf-8")``
    with ``addfile`` per entry (headers are tarfile's own ``tobuf``), written here without
    its stream layer and per-file copy loop, which cost more than the headers on a tree of
    small files: each header, the content, zeros to a whole block; at the end two zero
    blocks and zeros to a whole record, as tarfile closes a stream.
    """
    import tarfile  # noqa: PLC0415  # see _Archive: the worker reads most bundles without it

    total = 0
    offset = 0
    pending: list[bytes] = []
    buffered = 0
    for source in sources:
        info = tarfile.TarInfo(source.name)
        info.mtime = 0
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        if source.is_dir:
            info.type = tarfile.DIRTYPE
            info.mode = _DIR_MODE
            content = b""
        else:
            content = source.content if source.content is not None else _read(source)
            info.type = tarfile.REGTYPE
            info.mode = _EXEC_MODE if source.executable else _FILE_MODE
            info.size = len(content)
            total += len(content)
        header = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
        padding = -len(content) % tarfile.BLOCKSIZE
        pending += (header, content, _ZEROS[:padding])
        size = len(header) + len(content) + padding
        offset += size
        buffered += size
        if buffered >= _READ:
            sink.write(b"".join(pending))
            pending.clear()
            buffered = 0
    offset += 2 * tarfile.BLOCKSIZE
    pending.append(bytes(2 * tarfile.BLOCKSIZE + -offset % tarfile.RECORDSIZE))
    sink.write(b"".join(pending))
    return total


def _read(source: _Source) -> bytes:
    """The file's bytes, read once: its size in the archive is what was read, even if it
    changes while being bundled."""
    assert source.path is not None
    try:
        return source.path.read_bytes()
    except OSError as error:
        raise BundleError(f"cannot read {source.path}: {error.strerror}") from None


def _too_large(what: str, regular: Sequence[_Source]) -> BundleTooLarge:
    largest = sorted(regular, key=lambda s: (-s.size, s.name))[:5]
    named = [(s.shown, s.size) for s in largest]
    listing = ", ".join(f"{shown} ({_human(size)})" for shown, size in named)
    return BundleTooLarge(
        f"the code bundle is {what}. Largest files: {listing or 'none'}. The bundle is for "
        "code: put big data in the worker image or a volume, or leave it out with a "
        ".gitignore in the working_dir.",
        named,
    )


def _human(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    if size < MiB:
        return f"{size / 1024:.1f} KiB"
    return f"{size / MiB:.1f} MiB"


# -- split and join --------------------------------------------------------------------------


def split(data: bytes, chunk: int = SECRET_CHUNK_BYTES) -> list[bytes]:
    """``data`` in pieces of at most ``chunk`` bytes, in order (none for empty data); one
    piece a Secret (:data:`SECRET_CHUNK_BYTES`). :func:`join` puts them back."""
    if chunk <= 0:
        raise ValueError(f"chunk must be positive, not {chunk}")
    return [data[i : i + chunk] for i in range(0, len(data), chunk)]


def join(chunks: Sequence[bytes]) -> bytes:
    """The bundle's data from the pieces :func:`split` made, in their order."""
    return b"".join(chunks)


# -- unpack ----------------------------------------------------------------------------------


class _Inflated:
    """The uncompressed stream of a gzip member as a readable file, hashed as it is read.

    Refuses (:class:`UnsafeBundle`) more than :data:`MAX_UNPACKED_BYTES` of output, counted
    while inflating (never more than one read's worth past it), a stream that is not gzip,
    a truncated or corrupt one (zlib checks the CRC-32 and length), and bytes after it.
    """

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self._offset = 0
        self._inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)  # gzip wrapper only
        self._pending = b""
        self._buffer = bytearray()
        self.hash = hashlib.sha256()
        self.total = 0

    def read(self, size: int = -1) -> bytes:
        want = size if size >= 0 else MAX_UNPACKED_BYTES + 1
        while len(self._buffer) < want and not self._inflate.eof:
            self._buffer += self._more()
        if self._inflate.eof and (self._inflate.unused_data or self._offset < len(self._data)):
            raise UnsafeBundle("the bundle has bytes after its gzip stream")
        out = bytes(self._buffer[:want])
        del self._buffer[:want]
        return out

    def _more(self) -> bytes:
        """At most :data:`_READ` more bytes of output (so a bomb is caught within one)."""
        if not self._pending:
            if self._offset >= len(self._data):
                raise UnsafeBundle("the bundle is truncated (its gzip stream does not end)")
            self._pending = bytes(self._data[self._offset : self._offset + _READ])
            self._offset += len(self._pending)
        try:
            out = self._inflate.decompress(self._pending, _READ)
        except zlib.error as error:
            raise UnsafeBundle(f"the bundle is not a valid gzip stream: {error}") from None
        self._pending = self._inflate.unconsumed_tail
        self.total += len(out)
        if self.total > MAX_UNPACKED_BYTES:
            raise UnsafeBundle(
                f"the bundle inflates to more than {_human(MAX_UNPACKED_BYTES)} "
                "(the limit of an archive's uncompressed size)"
            )
        self.hash.update(out)
        return out

    def drain(self) -> None:
        while self.read(_READ):
            pass


# tarfile's type flags, spelled here: the worker reads a canonical archive without tarfile.
_REGTYPE, _AREGTYPE, _DIRTYPE, _PAX_HEADER = b"0", b"\x00", b"5", b"x"
#: The member types a bundle may hold. Everything else (symlinks, hard links, devices,
#: FIFOs, sparse and contiguous files, unknown types) is refused.
_FILE_TYPES = frozenset({_REGTYPE, _AREGTYPE})


class _Member(Protocol):
    """What is read of a member: a ``tarfile.TarInfo``, or a :class:`_Canonical`."""

    @property
    def name(self) -> str: ...
    @property
    def type(self) -> bytes: ...
    @property
    def size(self) -> int: ...
    @property
    def mode(self) -> int: ...
    @property
    def offset_data(self) -> int: ...


def _checked_name(member: _Member, seen: set[str]) -> str:
    """The member's name, if it is a plain relative path under one of the layout's
    top-level directories, not seen before; else :class:`UnsafeBundle` naming it."""
    name = member.name
    if member.type == _DIRTYPE and name.endswith("/"):
        name = name[:-1]
    if name.startswith("/") or "\x00" in name or "\\" in name:
        raise UnsafeBundle(f"bundle member {member.name!r}: an absolute or unusual path")
    parts = name.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise UnsafeBundle(f"bundle member {member.name!r}: '..', '.' or an empty component")
    if parts[0] not in _TOP_LEVEL:
        raise UnsafeBundle(f"bundle member {member.name!r}: outside the bundle's layout")
    if member.type not in _FILE_TYPES and member.type != _DIRTYPE:
        kind = _KINDS.get(member.type, f"of type {member.type!r}")
        raise UnsafeBundle(f"bundle member {member.name!r} is {kind}: only files and directories")
    if member.type == _DIRTYPE and member.size:
        raise UnsafeBundle(f"bundle member {member.name!r}: a directory with data")
    if name in seen:
        raise UnsafeBundle(f"bundle member {member.name!r} is in the archive twice")
    seen.add(name)
    if len(seen) > MAX_ENTRIES:
        raise UnsafeBundle(
            f"bundle member {member.name!r}: more than {MAX_ENTRIES} entries in the archive"
        )
    return name


_KINDS = {
    b"2": "a symlink",
    b"1": "a hard link",
    b"3": "a character device",
    b"4": "a block device",
    b"6": "a FIFO",
    b"7": "a contiguous file",
    b"S": "a sparse file",
}


class _Canonical(NamedTuple):
    """A member as :func:`_canonical_members` reads it (the fields of a ``TarInfo`` that
    unpacking uses)."""

    name: str
    type: bytes
    size: int
    mode: int
    offset_data: int


_BLOCK = 512
_USTAR_MAGIC = b"ustar\x0000"


def _octal(field: bytes) -> int | None:
    """A header's number: octal digits, then NULs or spaces; None for anything else (base-256
    numbers included: a canonical archive has none)."""
    digits = field.split(b"\x00", 1)[0].strip(b" ")
    if not digits:
        return 0
    if digits.strip(b"01234567"):
        return None
    return int(digits, 8)


def _pax_path(record_bytes: bytes) -> str | None:
    """The ``path`` of a pax extended header that holds only that (what tarfile writes for a
    long or non-ASCII name), else None."""
    found: str | None = None
    position = 0
    while position < len(record_bytes):
        space = record_bytes.find(b" ", position)
        length_field = record_bytes[position:space] if space > position else b""
        if not length_field.isdigit():
            return None
        end = position + int(length_field)
        record = record_bytes[space + 1 : end]
        if end > len(record_bytes) or not record.endswith(b"\n"):
            return None
        keyword, equals, value = record[:-1].partition(b"=")
        if keyword != b"path" or not equals or found is not None:
            return None
        try:
            found = value.decode("utf-8").rstrip("/")
        except UnicodeDecodeError:
            return None
        position = end
    return found


def _canonical_members(raw: bytes) -> list[_Canonical] | None:
    """The members of an uncompressed archive in the canonical form :func:`pack` writes, read
    without tarfile (whose import, with shutil's, costs a cold worker a few milliseconds): a
    ustar header with a good checksum and no prefix per member, of type file or directory,
    each at most once preceded by a pax header holding only ``path``; the archive ends at a
    zero block. These are read as tarfile reads them (names decoded as UTF-8, trailing
    slashes of directories and pax paths dropped). Anything else, valid or not, gives None:
    tarfile then reads the archive and decides. Either way every member is checked by
    :meth:`_Archive.members` (names, types, sizes, limits) before anything is written."""
    members: list[_Canonical] = []
    view = memoryview(raw)
    position = 0
    path: str | None = None
    while True:
        header = bytes(view[position : position + _BLOCK])
        if len(header) < _BLOCK:
            return None
        if header == _ZEROS:
            return members if path is None else None
        stored = _octal(header[148:156])
        checksum = sum(header[:148]) + sum(header[156:]) + 8 * 32  # the field as spaces
        size = _octal(header[124:136])
        mode = _octal(header[100:108])
        kind = header[156:157]
        if (
            stored != checksum
            or header[257:265] != _USTAR_MAGIC
            or any(header[345:500])  # a ustar prefix
            or size is None
            or mode is None
            or kind not in (_REGTYPE, _DIRTYPE, _PAX_HEADER)
        ):
            return None
        start = position + _BLOCK
        position = start + size + -size % _BLOCK
        if start + size > len(raw):
            return None
        if kind == _PAX_HEADER:
            if path is not None:
                return None
            path = _pax_path(bytes(view[start : start + size]))
            if path is None:
                return None
            continue
        if path is None:
            try:
                name = header[:100].split(b"\x00", 1)[0].decode("utf-8")
            except UnicodeDecodeError:
                return None
        else:
            name, path = path, None
        if kind == _DIRTYPE:
            name = name.rstrip("/")
        members.append(_Canonical(name, kind, size, mode, start))


#: An archive that inflates to at most this many bytes is inflated once, into memory, and
#: checked and written from there (every real bundle of code: a few hundred KiB). A larger one,
#: or one that is not a clean gzip stream, is read forward twice, streaming, never holding more
#: than a read's worth (see :func:`unpack`): a decompression bomb costs at most this much memory
#: and :data:`MAX_UNPACKED_BYTES` of inflating.
IN_MEMORY_BYTES = 8 * MiB
#: One step of :func:`_inflate_whole`, in and out.
_FEED = 1 * MiB


def _inflate_whole(data: bytes) -> bytes | None:
    """The archive's uncompressed bytes, inflated once, if it is one complete gzip stream with
    nothing after it that inflates to at most :data:`IN_MEMORY_BYTES` (and
    :data:`MAX_UNPACKED_BYTES`); else None, and the streaming reader decides what is wrong
    (with its own messages: over a limit, truncated, corrupt, trailing bytes)."""
    cap = min(IN_MEMORY_BYTES, MAX_UNPACKED_BYTES)
    inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)  # gzip wrapper only; checks CRC, length
    source = memoryview(data)
    chunks: list[bytes] = []
    total = offset = 0
    pending: bytes | memoryview = b""
    try:
        # Bounded steps in and out: a bomb is given up on within one step past the cap.
        while not inflate.eof:
            if not pending:
                if offset >= len(source):
                    return None  # truncated
                pending = source[offset : offset + _FEED]
                offset += len(pending)
            out = inflate.decompress(pending, _FEED)
            pending = inflate.unconsumed_tail
            total += len(out)
            if total > cap:
                return None
            chunks.append(out)
    except zlib.error:
        return None
    if inflate.unused_data or pending or offset < len(source):
        return None
    return b"".join(chunks)


class _Archive:
    """An archive read forward once: its checked members, then their content. Tar errors
    become :class:`UnsafeBundle`; the hash is final once :meth:`close` has drained it.

    A small archive is inflated whole first (:func:`_inflate_whole`): its members are then
    read from memory (``raw``), by :func:`_canonical_members` when it is in the canonical
    form (no tarfile), else by tarfile, and their content is sliced from it, so
    :func:`unpack` inflates and parses it once. Otherwise the tar is read by tarfile as a
    stream of :class:`_Inflated` (``raw`` is None)."""

    def __init__(self, data: bytes) -> None:
        self.raw = _inflate_whole(data)
        self.stream: _Inflated | None = None
        self._listed = _canonical_members(self.raw) if self.raw is not None else None
        self._tar: tarfile.TarFile | None = None
        self._seen: set[str] = set()
        self._declared = 0
        if self._listed is not None:
            return
        import tarfile  # noqa: PLC0415  # only for an archive not in the canonical form

        self._tar_error: type[Exception] = tarfile.TarError
        try:
            if self.raw is not None:
                # Closed by close(); a seekable file: headers are read, content is skipped.
                self._tar = tarfile.open(  # noqa: SIM115
                    fileobj=io.BytesIO(self.raw), mode="r:", encoding="utf-8"
                )
            else:
                self.stream = _Inflated(data)
                # Closed by close(); read() is all an "r|" stream uses (hence the ignore).
                self._tar = tarfile.open(  # type: ignore[call-overload]  # noqa: SIM115
                    fileobj=self.stream, mode="r|", encoding="utf-8"
                )
        except tarfile.TarError as error:
            raise UnsafeBundle(f"the bundle is not a valid archive: {error}") from None

    def members(self) -> Iterator[tuple[_Member, str]]:
        if self._listed is not None:
            for canonical in self._listed:
                yield self._checked(canonical)
            return
        assert self._tar is not None
        try:
            for member in self._tar:
                yield self._checked(member)
        except self._tar_error as error:
            raise UnsafeBundle(f"the bundle is not a valid archive: {error}") from None

    def _checked(self, member: _Member) -> tuple[_Member, str]:
        name = _checked_name(member, self._seen)
        # The sizes the headers declare, refused before their data is read.
        self._declared += member.size
        if self._declared > MAX_UNPACKED_BYTES:
            raise UnsafeBundle(
                f"bundle member {member.name!r}: the files would be more than "
                f"{_human(MAX_UNPACKED_BYTES)} (the limit of a bundle's size)"
            )
        if self.raw is not None and member.offset_data + member.size > len(self.raw):
            raise UnsafeBundle(f"bundle member {member.name!r}: unexpected end of data")
        return member, name

    def content(self, member: _Member) -> Iterator[bytes | memoryview]:
        if self.raw is not None:  # bounds checked by members()
            yield memoryview(self.raw)[member.offset_data : member.offset_data + member.size]
            return
        assert self._tar is not None
        try:
            handle = self._tar.extractfile(member)  # type: ignore[arg-type]  # a TarInfo here
            assert handle is not None  # a regular file's
            while chunk := handle.read(_READ):
                yield chunk
        except self._tar_error as error:
            raise UnsafeBundle(f"bundle member {member.name!r}: {error}") from None

    def close(self) -> str:
        """Read to the end of the stream; returns the content's hash."""
        if self._tar is not None:
            self._tar.close()
        if self.raw is not None:
            return HASH_PREFIX + hashlib.sha256(self.raw).hexdigest()
        assert self.stream is not None
        self.stream.drain()
        return HASH_PREFIX + self.stream.hash.hexdigest()


def digest(data: bytes) -> str:
    """The bundle's ``sha256:<hex>`` (what :attr:`Bundle.sha256` is), reading it as
    :func:`unpack` does: an unsafe or over-limit archive raises :class:`UnsafeBundle`."""
    archive = _Archive(data)
    for _ in archive.members():
        pass
    return archive.close()


def unpack(data: bytes, dest: Path, *, expected_sha256: str | None = None) -> None:
    """Extract a bundle into ``dest``, an existing empty directory that no one else can
    write to (e.g. made with mode 0o700; its mode is left as it is).

    Every member is checked (a plain relative path in the layout, a file or a directory, not
    twice, within the limits, all counted while inflating) and the hash, against
    ``expected_sha256`` when given, before anything is written; then the files are written.
    An archive that inflates to at most :data:`IN_MEMORY_BYTES` is inflated and parsed once,
    and written from memory; a larger one is read twice, streaming (the first pass checks,
    the second writes), so memory stays bounded. A refused archive (:class:`UnsafeBundle`,
    naming the member) leaves ``dest`` empty. Files get mode 0o644 or 0o755, directories
    0o755, whatever the archive says, and are created without following links and never
    over an existing name.
    """
    dest = Path(dest)
    try:
        info = dest.lstat()
    except OSError:
        info = None
    if info is None or not stat.S_ISDIR(info.st_mode):
        raise BundleError(f"unpack: {dest} is not an existing directory")
    if info.st_mode & 0o022:
        raise BundleError(f"unpack: {dest} is writable by others: unpack into a private directory")
    if any(dest.iterdir()):
        raise BundleError(f"unpack: {dest} is not empty")
    archive = _Archive(data)
    members = list(archive.members())
    actual = archive.close()
    if expected_sha256 is not None and not hmac.compare_digest(actual, expected_sha256):
        raise UnsafeBundle(f"the bundle's hash is {actual}, not the expected {expected_sha256}")
    try:
        if archive.raw is not None:
            _write(archive, members, os.fspath(dest))
        else:
            _write(_Archive(data), None, os.fspath(dest))
    except BaseException:
        _empty(dest)
        raise


_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def _write(archive: _Archive, checked: list[tuple[_Member, str]] | None, root: str) -> None:
    """Write the members: ``checked`` (already read from ``archive``, held in memory), or
    ``archive``'s own, read (and checked again) as they are written."""
    made: set[str] = set()
    for member, name in checked if checked is not None else archive.members():
        parts = name.split("/")
        for depth in range(1, len(parts)):
            _make_directory(root, "/".join(parts[:depth]), made)
        if member.type == _DIRTYPE:
            _make_directory(root, name, made)
            continue
        mode = _EXEC_MODE if member.mode & 0o111 else _FILE_MODE
        try:
            fd = os.open(os.path.join(root, name), _CREATE, mode)
        except OSError as error:
            raise UnsafeBundle(f"bundle member {name!r}: {error.strerror}") from None
        try:
            os.fchmod(fd, mode)  # the umask does not decide
            for chunk in archive.content(member):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
    if checked is None:
        archive.close()


def _make_directory(root: str, name: str, made: set[str]) -> None:
    if name in made:
        return
    try:
        os.mkdir(os.path.join(root, name), _DIR_MODE)
    except OSError as error:
        raise UnsafeBundle(f"bundle member {name!r}: {error.strerror}") from None
    os.chmod(os.path.join(root, name), _DIR_MODE)  # just made, in a private directory
    made.add(name)


def _empty(dest: Path) -> None:
    import shutil  # noqa: PLC0415  # only after a failed extraction

    for child in dest.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def import_paths(dest: Path) -> list[Path]:
    """The ``sys.path`` entries of a bundle unpacked in ``dest``, first first: its working
    directory, then its py_modules' directory (those it has)."""
    return [dest / top for top in (WORKING_DIR, PY_MODULES) if (dest / top).is_dir()]
