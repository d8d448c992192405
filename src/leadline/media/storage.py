"""Where fetched media is kept.

:class:`MediaStorage` is the port; :class:`LocalMediaStorage` (a folder, ``media.storage_dir``) is the
only implementation. S3-compatible storage is not implemented: it would be a second class with the same
three methods (``put`` uploading the staged file, ``open`` streaming the object back), chosen in
:func:`leadline.bootstrap.build_services`.
"""

from __future__ import annotations

import asyncio
import os
import re
import tempfile
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from aiobotocore.session import ClientCreatorContext, get_session
from botocore.exceptions import ClientError

from leadline.config import MediaConfig

_KEY = re.compile(r"sha256/[0-9a-f]{2}/[0-9a-f]{64}")
_CHUNK = 256 * 1024


class MediaStorage(Protocol):
    def staging_file(self) -> Path:
        """A new empty file to download into, on the same volume as the stored media."""
        ...

    async def put(self, staged: Path, sha256: str) -> str:
        """Keep the staged file (consuming it) and return its storage key."""
        ...

    async def open(self, key: str) -> AsyncIterator[bytes] | None:
        """``key``'s bytes, in chunks, or None if they are not (or no longer) there."""
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
        return _new_staging_file(self._staging)

    async def put(self, staged: Path, sha256: str) -> str:
        key = _key_of(sha256)
        target = self.root / key
        target.parent.mkdir(parents=True, exist_ok=True)
        # Atomic on one volume; if the same bytes are there already, this replaces them with themselves.
        os.replace(staged, target)
        return key

    async def open(self, key: str) -> AsyncIterator[bytes] | None:
        if not _KEY.fullmatch(key):
            return None
        try:
            file = (self.root / key).open("rb")
        except FileNotFoundError:
            return None
        return _chunks_of(file)


async def _chunks_of(file: BinaryIO) -> AsyncIterator[bytes]:
    with file:
        while chunk := await asyncio.to_thread(file.read, _CHUNK):
            yield chunk


def _new_staging_file(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix="fetch-", suffix=".part", dir=folder)
    os.close(handle)
    return Path(name)


def _key_of(sha256: str) -> str:
    key = f"sha256/{sha256[:2]}/{sha256}"
    if not _KEY.fullmatch(key):
        raise ValueError("sha256 must be 64 lower-case hex digits")
    return key


class S3MediaStorage:
    """Content-addressed objects in a bucket of any S3-compatible store (AWS S3, MinIO, R2, Ceph...).

    Downloads are staged in a local folder (hashed as they arrive), then uploaded under
    ``<prefix>sha256/<first two hex>/<sha256>``; bytes already in the bucket are not uploaded again. The
    client (aiobotocore) signs every request; credentials come from the configuration or, when it names
    none, from the usual AWS sources (environment, instance role).
    """

    def __init__(self, config: MediaConfig):
        assert config.s3_bucket is not None
        self._config = config
        self._bucket = config.s3_bucket
        self._prefix = config.s3_prefix
        self._staging = Path(config.storage_dir) / "staging"
        self._session = get_session()

    def staging_file(self) -> Path:
        return _new_staging_file(self._staging)

    def _client(self) -> ClientCreatorContext:
        config = self._config
        return self._session.create_client(
            "s3",
            endpoint_url=config.s3_endpoint_url,
            region_name=config.s3_region,
            aws_access_key_id=config.s3_access_key_id.get_secret_value() if config.s3_access_key_id else None,
            aws_secret_access_key=(
                config.s3_secret_access_key.get_secret_value() if config.s3_secret_access_key else None
            ),
        )

    async def put(self, staged: Path, sha256: str) -> str:
        key = _key_of(sha256)
        async with self._client() as s3:
            if not await _exists(s3, self._bucket, self._prefix + key):
                with open(staged, "rb") as body:  # noqa: ASYNC230 - a local file; the upload streams it
                    size = os.fstat(body.fileno()).st_size
                    await s3.put_object(Bucket=self._bucket, Key=self._prefix + key, Body=body, ContentLength=size)
        os.unlink(staged)
        return key

    async def open(self, key: str) -> AsyncIterator[bytes] | None:
        if not _KEY.fullmatch(key):
            return None
        async with AsyncExitStack() as client_held:
            s3 = await client_held.enter_async_context(self._client())
            try:
                found = await s3.get_object(Bucket=self._bucket, Key=self._prefix + key)
            except ClientError as error:
                if _not_found(error):
                    return None
                raise
            # The client stays open while the object streams; the stream closes it.
            return _object_chunks(client_held.pop_all(), found["Body"])


async def _object_chunks(client_held: AsyncExitStack, body: Any) -> AsyncIterator[bytes]:
    async with client_held:
        try:
            async for chunk in body.iter_chunks(_CHUNK):
                yield chunk
        finally:
            body.close()


async def _exists(s3: Any, bucket: str, key: str) -> bool:
    try:
        await s3.head_object(Bucket=bucket, Key=key)
    except ClientError as error:
        if _not_found(error):
            return False
        raise
    return True


def _not_found(error: ClientError) -> bool:
    return str(error.response.get("Error", {}).get("Code")) in ("404", "NoSuchKey", "NotFound")
