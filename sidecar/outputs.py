"""One output file: select its keys, render, write only when the bytes change, trigger actions."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Mapping

from sidecar.files import read_current, remove_stale_temp_files, write_atomic
from sidecar.logs import get_logger
from sidecar.metrics import Metrics
from sidecar.render import JsonDocument, RenderError, load_template, output_names, render
from sidecar.settings import OutputSettings
from sidecar.state import OutputStatus

log = get_logger("outputs")


class OutputWriter:
    """Keeps one file equal to the rendering of its keys. The file on disk at start is the
    baseline: identical bytes are neither rewritten nor announced to on-change actions."""

    def __init__(
        self,
        settings: OutputSettings,
        status: OutputStatus,
        metrics: Metrics,
        allow_empty: bool,
    ) -> None:
        self.settings = settings
        self.status = status
        self._metrics = metrics
        self._allow_empty = allow_empty
        self.failed_stage: str | None = None
        self._template = load_template(settings.template) if settings.template else None
        # json, the default format, is kept up to date key by key; the others render every key.
        self._document = (
            JsonDocument(settings.prefixes, settings.keys) if settings.format == "json" else None
        )
        removed = remove_stale_temp_files(settings.path)
        if removed:
            log.info("stale_temp_files_removed", output=settings.path, count=len(removed))
        # What is on disk is remembered by its digest, not its bytes: a file of 100,000 keys is
        # 12 MB that would otherwise stay in memory for the comparison alone.
        on_disk = read_current(settings.path)
        self._on_disk_sha256 = None if on_disk is None else hashlib.sha256(on_disk).hexdigest()
        if on_disk is not None:
            status.bytes = len(on_disk)
            status.sha256 = self._on_disk_sha256
        # (sha256, bytes) of the file when the last sync() rewrote it, else None: the syncer
        # gathers these into one on-change notice per batch.
        self.written: tuple[str, int] | None = None

    def sync(
        self,
        values: Callable[[], Mapping[bytes, bytes]],
        revision: int,
        arrival: float | None,
        changes: Mapping[bytes, bytes | None] | None = None,
    ) -> bool:
        """Bring the file up to date with the keys at `revision`: `changes` are the keys changed
        since the previous call (None: unknown, use every key from `values()`). False when it could
        not be done (the last good file stays, the error is logged, counted and kept in the
        status)."""
        path = self.settings.path
        self.written = None
        try:
            document = self._document
            if document is not None:
                if changes is None or not document.update(changes):
                    document.rebuild(values())
                count = len(document)
            else:
                names = output_names(values(), self.settings.prefixes, self.settings.keys)
                count = len(names)
            if not count and not self._allow_empty:
                return self._fail("empty", "no keys found for this output", revision)
            if document is not None:
                data = document.render()
            else:
                data = render(self.settings.format, names, revision, self._template)
        except RenderError as exc:
            return self._fail("render", str(exc), revision)
        digest = hashlib.sha256(data).hexdigest()
        if digest == self._on_disk_sha256:
            self._apply_mode()
            self._succeed(revision)
            return True
        try:
            write_atomic(path, data, self.settings.mode)
        except OSError as exc:
            reason = os.strerror(exc.errno) if exc.errno else type(exc).__name__
            return self._fail("write", f"cannot write: {reason}", revision)
        if arrival is not None:
            self._metrics.update_latency.observe(time.monotonic() - arrival)
        self._on_disk_sha256 = digest
        self.status.bytes = len(data)
        self.status.sha256 = digest
        self.status.last_write = time.time()
        self._metrics.file_writes.labels(output=path).inc()
        log.info(
            "file_written",
            output=path,
            bytes=len(data),
            sha256=digest[:16],
            revision=revision,
            keys=count,
        )
        self._succeed(revision)
        self.written = (digest, len(data))
        return True

    def _apply_mode(self) -> None:
        """A changed --file-mode applies even when the bytes are already right."""
        try:
            if os.stat(self.settings.path).st_mode & 0o777 != self.settings.mode:
                os.chmod(self.settings.path, self.settings.mode)
        except OSError:
            pass  # the next write reports real trouble

    def _succeed(self, revision: int) -> None:
        if self.status.last_error is not None:
            log.info("output_recovered", output=self.settings.path, revision=revision)
        self.status.revision = revision
        self.status.current = True
        self.status.last_error = None
        self.failed_stage = None

    def _fail(self, stage: str, message: str, revision: int) -> bool:
        self._metrics.errors.labels(stage=stage).inc()
        # Repeating the same error on every event would flood the log; say it when it changes.
        if message != self.status.last_error:
            log.error(
                f"{stage}_failed", output=self.settings.path, revision=revision, error=message
            )
        self.status.last_error = message
        self.status.last_error_time = time.time()
        self.failed_stage = stage
        self.status.current = False
        return False
