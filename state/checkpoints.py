"""Checkpoints of partition stores on local disk, each with a manifest, and their life cycle.

Layout: ``ROOT/partition-P/CHECKPOINT_ID/`` holds a RocksDB checkpoint of partition P's store
taken at a ``CheckpointBarrier`` (SST files hard-linked from the live store, the rest copied)
and ``LUKHAS-MANIFEST.json``. A checkpoint is built under a hidden name (``.partial-ID``) and
renamed into place only once its files and its manifest are written and synced: a process
killed half-way leaves a hidden directory that is never listed, never used, and removed the
next time that partition takes a checkpoint.

The manifest carries the checkpoint id, partition, WAL topic, ``next_offset`` (the barrier's
offset + 1: the checkpoint holds the fold of exactly ``[0, next_offset)``), the record and
document counts, the digest (see ``state.store``), the wall time it was made, and the
checksum of all of that (xxh3-64 over the canonical JSON of the other fields). A checkpoint is
*valid* when its manifest parses and its checksum matches; before one is used to restore, the
store it holds is opened and its digest recomputed (``verify``) and compared.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from lukhas_context.state.exceptions import CheckpointError, InvalidCheckpointError
from lukhas_context.state.manifest import Manifest, check_checkpoint_id
from lukhas_context.state.store import PartitionStore

log = logging.getLogger(__name__)

MANIFEST_NAME = "LUKHAS-MANIFEST.json"
PARTIAL_PREFIX = ".partial-"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class CheckpointDir:
    """The checkpoints of every partition under one root directory."""

    def __init__(self, root: Path, topic: str) -> None:
        self.root = root
        self.topic = topic

    def partition_dir(self, partition: int) -> Path:
        return self.root / f"partition-{partition}"

    def path(self, partition: int, checkpoint_id: str) -> Path:
        return self.partition_dir(partition) / check_checkpoint_id(checkpoint_id)

    def create(
        self,
        store: PartitionStore,
        partition: int,
        checkpoint_id: str,
        before_manifest: Callable[[], None] | None = None,
    ) -> Manifest:
        """Checkpoints ``store`` as last committed under ``checkpoint_id``.

        A valid checkpoint of that id that already exists (a replay passing the same
        barrier) is kept, not rewritten: if its digest differs from the store's, that is
        corruption of one of them, raised as ``CheckpointError``. ``before_manifest`` runs
        between the RocksDB checkpoint and the manifest (tests kill the process there).
        """
        summary = store.summary()
        final = self.path(partition, checkpoint_id)
        if final.exists():
            existing = self.load(final)
            if existing.next_offset != summary.next_offset:
                raise CheckpointError(
                    f"checkpoint id {checkpoint_id} is taken by {final} at offset "
                    f"{existing.next_offset}; this barrier is at offset {summary.next_offset}: "
                    "give each checkpoint a new id"
                )
            if not existing.matches(summary):
                raise CheckpointError(
                    f"checkpoint {final} holds digest {existing.digest:016x} at offset "
                    f"{existing.next_offset}, but the fold of the same log prefix has digest "
                    f"{summary.digest_hex} at offset {summary.next_offset}: one of them is corrupt"
                )
            return existing
        parent = self.partition_dir(partition)
        parent.mkdir(parents=True, exist_ok=True)
        self.remove_partial(partition)
        partial = parent / f"{PARTIAL_PREFIX}{checkpoint_id}"
        store.checkpoint(partial)
        if before_manifest is not None:
            before_manifest()
        manifest = Manifest(
            checkpoint_id, partition, self.topic, summary.next_offset, summary.records,
            summary.documents, summary.digest, int(time.time() * 1000),
        )  # fmt: skip
        manifest_path = partial / MANIFEST_NAME
        with open(manifest_path, "wb") as f:
            f.write(manifest.to_json())
            f.flush()
            os.fsync(f.fileno())
        for child in partial.iterdir():  # RocksDB's checkpoint does not sync what it copied
            if child.is_file() and not child.name.endswith(".sst"):
                with open(child, "rb") as f:
                    os.fsync(f.fileno())
        _fsync_dir(partial)
        os.rename(partial, final)
        _fsync_dir(parent)
        return manifest

    def remove_partial(self, partition: int) -> list[Path]:
        """Deletes what a killed checkpoint left (hidden ``.partial-*`` directories only)."""
        parent = self.partition_dir(partition)
        removed = []
        if parent.is_dir():
            for child in parent.iterdir():
                if child.name.startswith(PARTIAL_PREFIX):
                    shutil.rmtree(child)
                    removed.append(child)
        return removed

    def load(self, path: Path) -> Manifest:
        """The manifest of the checkpoint at ``path``; ``InvalidCheckpointError`` if missing
        or invalid, or if it is not where it claims to belong."""
        try:
            data = (path / MANIFEST_NAME).read_bytes()
        except OSError as exc:
            raise InvalidCheckpointError(f"checkpoint {path} has no manifest: {exc}") from None
        manifest = Manifest.from_json(data, str(path / MANIFEST_NAME))
        if (manifest.checkpoint_id, manifest.topic) != (path.name, self.topic) or (
            path.parent.name != f"partition-{manifest.partition}"
        ):
            raise InvalidCheckpointError(
                f"checkpoint {path} holds {manifest.checkpoint_id} of {manifest.topic} "
                f"partition {manifest.partition}"
            )
        return manifest

    def valid(self, partition: int) -> list[Manifest]:
        """The partition's valid checkpoints, newest (highest ``next_offset``) first. Invalid
        ones are logged and skipped, never deleted."""
        parent = self.partition_dir(partition)
        if not parent.is_dir():
            return []
        found = []
        for child in parent.iterdir():
            if child.name.startswith(".") or not child.is_dir():
                continue
            try:
                found.append(self.load(child))
            except InvalidCheckpointError as exc:
                log.warning("skipping %s", exc)
        found.sort(key=lambda m: (m.next_offset, m.created_at_ms), reverse=True)
        return found

    def find(self, partition: int, checkpoint_id: str) -> Manifest:
        """The valid checkpoint of that id; ``InvalidCheckpointError`` when there is none."""
        path = self.path(partition, checkpoint_id)
        if not path.is_dir():
            raise InvalidCheckpointError(f"no checkpoint {checkpoint_id} of partition {partition}")
        return self.load(path)

    def prune(self, partition: int, keep: int) -> list[Path]:
        """Deletes all but the newest ``keep`` valid checkpoints of the partition."""
        removed = []
        for manifest in self.valid(partition)[keep:]:
            path = self.path(partition, manifest.checkpoint_id)
            shutil.rmtree(path)
            removed.append(path)
        return removed

    def install(self, manifest: Manifest, dest: Path) -> None:
        """Makes ``dest`` (which must not exist) a copy of the checkpoint's store: SST files
        are immutable and hard-linked, every other file is copied (RocksDB writes to them)."""
        source = self.path(manifest.partition, manifest.checkpoint_id)
        if dest.exists():
            raise CheckpointError(f"cannot install {source} into {dest}: it exists")
        partial = dest.with_name(f"{dest.name}.installing")
        if partial.exists():
            shutil.rmtree(partial)
        partial.mkdir(parents=True)
        for child in source.iterdir():
            if child.name == MANIFEST_NAME:
                continue
            target = partial / child.name
            if child.name.endswith(".sst"):
                try:
                    os.link(child, target)
                except OSError:  # another file system: copy
                    shutil.copy2(child, target)
            else:
                shutil.copy2(child, target)
        os.rename(partial, dest)
