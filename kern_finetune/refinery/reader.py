"""The one reader of input files: bytes and JSON from ``.json``, ``.json.gz`` and snapshot ``.zip`` files.

Every way a file can be unreadable ends here as one :class:`~kern_finetune.errors.ExportError` line that says
what to fix. Compressed inputs are decompressed while streaming and refused once they pass the size cap
(:func:`max_input_bytes`), so a zip or gzip bomb never fills memory. Lone UTF-16 surrogates spelled in JSON
(``"\\ud800"``), which no UTF-8 codec, hash or tokenizer accepts and refinery's Postgres refuses, become U+FFFD.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import zipfile
import zlib
from pathlib import Path
from typing import Any

from ..errors import ExportError

__all__ = ["DEFAULT_MAX_MB", "MAX_INPUT_ENV", "max_input_bytes", "is_zip", "read_export_bytes",
           "read_zip_json_member", "parse_json"]

DEFAULT_MAX_MB = 1024
"""Default cap on the decompressed size of one input file, in MiB."""
MAX_INPUT_ENV = "KERN_FINETUNE_MAX_INPUT_MB"
"""Environment variable that overrides :data:`DEFAULT_MAX_MB`."""

_CHUNK = 1 << 20
_GZIP_MAGIC = b"\x1f\x8b"
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_ZIP_METHODS = {9: "Deflate64", 12: "bzip2", 14: "LZMA", 93: "Zstandard", 95: "XZ", 98: "PPMd", 99: "AES encryption"}


def max_input_bytes(max_bytes: int | None = None) -> int:
    """The cap in bytes: ``max_bytes`` if given, else ``$KERN_FINETUNE_MAX_INPUT_MB``, else the default."""
    if max_bytes is not None:
        return int(max_bytes)
    raw = os.environ.get(MAX_INPUT_ENV, "").strip()
    if raw:
        try:
            mb = float(raw)
        except ValueError:
            raise ExportError(f"{MAX_INPUT_ENV}={raw!r} is not a number of MiB") from None
        if not mb > 0:
            raise ExportError(f"{MAX_INPUT_ENV} must be above 0, got {raw!r}")
        return int(mb * (1 << 20))
    return DEFAULT_MAX_MB << 20


def _too_big(path: Path, cap: int) -> ExportError:
    return ExportError(
        f"{path} holds more than {cap / (1 << 20):.0f} MiB once decompressed; if the file is genuine, "
        f"raise the cap with {MAX_INPUT_ENV}=<MiB>"
    )


def _read_stream(fh: Any, path: Path, cap: int) -> bytes:
    parts: list[bytes] = []
    total = 0
    while True:
        chunk = fh.read(_CHUNK)
        if not chunk:
            return b"".join(parts)
        total += len(chunk)
        if total > cap:
            raise _too_big(path, cap)
        parts.append(chunk)


def is_zip(path: str | Path) -> bool:
    """A snapshot zip: a ``.zip`` suffix in any case, or a regular file that starts with a zip's magic bytes."""
    path = Path(path)
    if path.suffix.lower() == ".zip":
        return True
    try:
        if not path.is_file():
            return False
        with open(path, "rb") as fh:
            return fh.read(4) == b"PK\x03\x04"
    except OSError:
        return False


def read_export_bytes(path: str | Path, *, max_bytes: int | None = None) -> bytes:
    """The raw bytes of a plain or gzip file (told by its magic bytes, not its suffix), decompressed under the
    cap; every stream is read in bounded chunks, files or not (``/dev/zero``, a pipe)."""
    path = Path(path)
    cap = max_input_bytes(max_bytes)
    if not path.exists():
        raise ExportError(f"export file not found: {path}")
    if path.is_dir():
        raise ExportError(f"{path} is a folder; name the export file (.json, .json.gz or a snapshot .zip)")
    try:
        with open(path, "rb") as fh:
            if fh.peek(2)[:2] == _GZIP_MAGIC:
                with gzip.GzipFile(fileobj=fh, mode="rb") as gz:
                    return _read_stream(gz, path, cap)
            if path.is_file() and path.stat().st_size > cap:
                raise _too_big(path, cap)
            return _read_stream(fh, path, cap)
    except ExportError:
        raise
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise ExportError(f"cannot read {path}: {_reason(exc)}; is it a complete .json or .json.gz file?") from None


def read_zip_json_member(path: str | Path, *, max_bytes: int | None = None) -> tuple[str, bytes]:
    """``(member name, bytes)`` of the one JSON file inside a snapshot zip (as refinery-gateway ``util/file.py``
    ``zip_to_json``; folders and ``__MACOSX`` entries ignored), decompressed under the cap."""
    path = Path(path)
    cap = max_input_bytes(max_bytes)
    if not path.exists():
        raise ExportError(f"snapshot not found: {path}")
    try:
        with zipfile.ZipFile(path) as zf:
            infos = [i for i in zf.infolist() if not i.is_dir() and not i.filename.startswith("__MACOSX")]
            members = [i for i in infos if i.filename.endswith(".json")]
            if len(members) != 1:
                raise ExportError(f"{path}: a snapshot holds exactly one JSON file, found {len(members)}")
            info = members[0]
            if info.flag_bits & 0x1:
                raise ExportError(
                    f"{path} is password-protected: export the snapshot from refinery again without a password "
                    f"(or unzip it with its password and zip the JSON file again)"
                )
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA):
                method = _ZIP_METHODS.get(info.compress_type, "unknown")
                raise ExportError(
                    f"{path} uses zip compression method {info.compress_type} ({method}), which cannot be read here: "
                    f"unzip it and zip the JSON file again with standard deflate"
                )
            if info.file_size > cap:
                raise _too_big(path, cap)
            with zf.open(info) as fh:
                return info.filename, _read_stream(fh, path, cap)
    except ExportError:
        raise
    except zipfile.BadZipFile:
        raise ExportError(f"{path} is not a zip file (or a damaged one): export the snapshot again") from None
    except (OSError, EOFError, zlib.error, RuntimeError, NotImplementedError, ValueError) as exc:
        raise ExportError(f"cannot read snapshot {path}: {_reason(exc)}; export the snapshot again") from None


def parse_json(raw: bytes | str, *, source: str) -> Any:
    """Decode UTF-8 (a leading BOM is allowed) and parse JSON; errors are one-line :class:`ExportError`."""
    if isinstance(raw, (bytes, bytearray)):
        try:
            text = bytes(raw).decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise ExportError(
                f"{source} is not valid UTF-8 (byte 0x{raw[exc.start]:02x} at position {exc.start}): save it as UTF-8"
            ) from None
        has_escape = _SURROGATE_ESCAPE.search(raw) is not None
    else:
        text = raw
        has_escape = "\\u" in text or _LONE_SURROGATE.search(text) is not None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        if _looks_like_csv(text, source):
            raise ExportError(f"{source} looks like CSV, which kern-finetune does not read: export the records from "
                              "refinery as JSON (.json or .json.gz) or a project snapshot (.zip)") from None
        raise ExportError(f"{source} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise ExportError(f"{source} nests JSON deeper than can be parsed: it is not a refinery export") from None
    return _scrub_surrogates(value) if has_escape else value


def _looks_like_csv(text: str, source: str) -> bool:
    """A ``.csv`` / ``.tsv`` name, or a first line that is not JSON but holds commas, semicolons or tabs."""
    if source.lower().endswith((".csv", ".tsv", ".csv.gz", ".tsv.gz")):
        return True
    first = text.lstrip("\ufeff \r\n").split("\n", 1)[0]
    return bool(first) and first[0] not in "[{\"" and any(sep in first for sep in (",", ";", "\t"))


def _scrub_surrogates(value: Any) -> Any:
    """Replace lone surrogates in every string (keys included), iteratively (no recursion limit)."""

    def fix(s: str) -> str:
        return s if s.isascii() else _LONE_SURROGATE.sub("\ufffd", s)

    if isinstance(value, str):
        return fix(value)
    stack: list[Any] = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            for i, item in enumerate(node):
                if isinstance(item, str):
                    node[i] = fix(item)
                elif isinstance(item, (list, dict)):
                    stack.append(item)
        elif isinstance(node, dict):
            for key in list(node):
                item = node[key]
                new_key = fix(key)
                if isinstance(item, str):
                    item = fix(item)
                elif isinstance(item, (list, dict)):
                    stack.append(item)
                if new_key != key:
                    del node[key]
                node[new_key] = item
    return value


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
