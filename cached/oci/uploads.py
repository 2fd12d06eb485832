"""Upload sessions: an OCI blob upload kept open across HTTP requests.

A session owns one BlobWriter from the POST that starts it to the PUT that
finishes it, so every PATCH streams straight into the chunk store: nothing
is buffered whole and nothing is staged in a temporary file. The writer is
opened without an expected digest, because OCI names the digest only in the
closing PUT; it hashes with every supported algorithm, and commit(digest)
checks the one the client names. Chunks must arrive in order, so a session
is just the writer plus the count of bytes it has received.

A session nobody touches for `expiry_seconds` is aborted by a reaper thread:
BlobWriter.abort truncates the pack back, so its space is freed. Sessions
live in memory only; after a restart their ids are unknown and clients
start over, which the spec allows (BLOB_UPLOAD_UNKNOWN).

Locking: `Uploads._lock` guards the table only and is never held while a
session's lock is awaited; a session's lock is held for a whole request on
it, so a long PATCH blocks nothing but a second request on the same upload.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

from cached.digest import Digest
from cached.model import WriteResult
from cached.oci.errors import UploadUnknown
from cached.store import BlobStore, BlobWriter

log = logging.getLogger(__name__)

_ID = re.compile(r"[0-9a-f]{32}")
# The reaper looks this often relative to the expiry, within these bounds.
_REAP_FRACTION = 4
_REAP_MIN_SECONDS = 0.05
_REAP_MAX_SECONDS = 30.0
# How long close() waits for a request still holding a session.
_CLOSE_WAIT_SECONDS = 5.0


class UploadSession:
    def __init__(self, namespace: str, writer: BlobWriter, now: float) -> None:
        self.id = uuid.uuid4().hex
        self.namespace = namespace
        self.lock = threading.Lock()
        self.last_used = now
        self._writer = writer
        self.ended = False

    @property
    def offset(self) -> int:
        return self._writer.received

    def append(self, pieces: Iterable[bytes]) -> None:
        """Writes pieces at the current offset. A body that breaks off leaves
        the session usable at the bytes received so far; a failing writer
        (it aborts itself) ends the session."""
        for piece in pieces:
            try:
                self._writer.write(piece)
            except BaseException:
                self.ended = True
                raise

    def finish(self, digest: Digest) -> WriteResult:
        """Verifies the whole blob against `digest` and stores it. Success or
        not, the session is over: a failed commit has aborted the writer."""
        self.ended = True
        return self._writer.commit(digest)

    def abort(self) -> None:
        self.ended = True
        self._writer.abort()


class Uploads:
    def __init__(self, store: BlobStore, expiry_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._store = store
        self._expiry = expiry_seconds
        self._clock = clock
        self._sessions: dict[str, UploadSession] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._reaper = threading.Thread(target=self._reap_loop, name="oci-upload-reaper", daemon=True)
        self._reaper.start()

    def start(self, namespace: str) -> UploadSession:
        writer = self._store.open_write(None, None, "application/octet-stream", namespace)
        session = UploadSession(namespace, writer, self._clock())
        with self._lock:
            self._sessions[session.id] = session
        return session

    @contextmanager
    def use(self, namespace: str, upload_id: str) -> Iterator[UploadSession]:
        """Holds the session for one request; forgets it once it has ended."""
        session = self._find(namespace, upload_id)
        with session.lock:
            # It may have been finished, cancelled or reaped while we waited.
            if session.ended:
                raise UploadUnknown(upload_id)
            try:
                yield session
            finally:
                session.last_used = self._clock()
                if session.ended:
                    self._forget(session)

    def cancel(self, namespace: str, upload_id: str) -> None:
        with self.use(namespace, upload_id) as session:
            session.abort()

    def _find(self, namespace: str, upload_id: str) -> UploadSession:
        if not _ID.fullmatch(upload_id):
            raise UploadUnknown(upload_id)
        with self._lock:
            session = self._sessions.get(upload_id)
        # An id is only valid under the repository that started it.
        if session is None or session.namespace != namespace:
            raise UploadUnknown(upload_id)
        return session

    def _forget(self, session: UploadSession) -> None:
        with self._lock:
            if self._sessions.get(session.id) is session:
                del self._sessions[session.id]

    def expire(self) -> int:
        """Aborts sessions idle for longer than the expiry; returns how many."""
        deadline = self._clock() - self._expiry
        with self._lock:
            idle = [s for s in self._sessions.values() if s.last_used < deadline]
        expired = 0
        for session in idle:
            # A session in use is not idle, whatever its timestamp says.
            if not session.lock.acquire(blocking=False):
                continue
            try:
                if session.last_used >= deadline:
                    continue  # used again since we looked
                if not session.ended:
                    log.info("upload %s in %s expired after %d bytes", session.id, session.namespace, session.offset)
                    session.abort()
                    expired += 1
                self._forget(session)
            finally:
                session.lock.release()
        return expired

    def _reap_loop(self) -> None:
        interval = min(max(self._expiry / _REAP_FRACTION, _REAP_MIN_SECONDS), _REAP_MAX_SECONDS)
        while not self._stop.wait(interval):
            try:
                self.expire()
            except Exception:  # keep reaping; the next round may succeed
                log.exception("expiring upload sessions failed")

    def close(self) -> None:
        """Stops the reaper and aborts every open session (daemon shutdown)."""
        self._stop.set()
        self._reaper.join()
        with self._lock:
            sessions = list(self._sessions.values())
            self._sessions.clear()
        for session in sessions:
            if not session.lock.acquire(timeout=_CLOSE_WAIT_SECONDS):
                log.warning("upload %s is still in use at shutdown; leaving it to the store", session.id)
                continue
            try:
                if not session.ended:
                    session.abort()
            finally:
                session.lock.release()
