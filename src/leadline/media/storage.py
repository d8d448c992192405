"""Where fetched media is kept.

:class:`MediaStorage` is the port; :class:`LocalMediaStorage` (a folder, ``media.storage_dir``) is the
only implementation. S3-compatible storage is not implemented: it would be a second class with the same
three methods (``put`` uploading the staged file, ``open`` streaming the object back), chosen in
:func:`leadline.bootstrap.build_services`.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Protocol

_KEY = re.compile(r"sha256/[0-9a-f]{2}/[0-9a-f]{64}")


class MediaStorage(Protocol):
    def staging_file(self) -> Path:
        """A new empty file to download into, on the same volume as the stored media."""
        ...

    async def put(self, staged: Path, sha256: str) -> str:
        """Keep the staged file (consuming it) and return its storage key."""
        ...

    def open(self, key: str) -> Path | None:
        """The file holding ``key``'s bytes, or None if it is not (or no longer) there."""
        ...


class LocalMediaStorage:
    """Content-addressed files under one folder: ``sha256/<first two hex>/<sha256>``.

    The same bytes received twice are kept once. A file appears under its final name only when complete
    (written under ``staging/``, then renamed), so a reader never sees half a file. Names come from the
    hash alone, never from anything a sender chose.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._staging = self.root / "staging"

    def staging_file(self) -> Path:
        self._staging.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(prefix="fetch-", suffix=".part", dir=self._staging)
        os.close(handle)
        return Path(name)

    async def put(self, staged: Path, sha256: str) -> str:
        key = f"sha256/{sha256[:2]}/{sha256}"
        if not _KEY.fullmatch(key):
            raise ValueError("sha256 must be 64 lower-case hex digits")
        target = self.root / key
        target.parent.mkdir(parents=True, exist_ok=True)
        # Atomic on one volume; if the same bytes are there already, this replaces them with themselves.
        os.replace(staged, target)
        return key

    def open(self, key: str) -> Path | None:
        if not _KEY.fullmatch(key):
            return None
        path = self.root / key
        return path if path.is_file() else None
