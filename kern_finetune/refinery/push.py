"""The push extension (``docs/push-contract.md``): write vectors into a refinery-compatible host.

No refinery version has these routes (refinery issues #24 / #48 ask for them); ``kern-finetune host`` implements
them. A push stages a version, uploads its tensors and finalizes it; the upload streams (one chunk's body in
memory at a time; ``vectors`` may be an ``np.memmap``).
"""

from __future__ import annotations

import base64
import json
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ..errors import (AuthError, ConfigError, HostError, HostUnavailableError, KernFinetuneError,
                      ProjectNotFoundError, PushError)
from .columns import PLATFORM, embedding_name, model_short_name
from .transport import Transport, error_code, json_body

__all__ = ["PushResult", "SimilarRecords", "Chunk", "PushExtension", "check_vectors", "iter_chunks", "TENSOR_FORMATS"]

log = logging.getLogger(__name__)

ProgressFn = Callable[[str], None]
TENSOR_FORMATS = ("json", "b64")
_CHECK_BLOCK = 4096
"""Rows read at a time while the vectors are checked (bounds the float64 copy)."""


@dataclass(frozen=True)
class PushResult:
    """What a finished push left on the host: the served embedding version."""

    embedding_id: str
    name: str
    count: int
    dimension: int
    chunks: int
    state: str = "FINISHED"


@dataclass(frozen=True)
class SimilarRecords:
    """A host's similarity-search answer, ranked as the host ranked it (``threshold``: None where it applies none).

    refinery's data browser returns the query record first; ``query_included`` says whether this host did.
    """

    record_id: str
    record_ids: list[str]
    scores: list[float]
    threshold: float | None
    embedding: str

    @property
    def query_included(self) -> bool:
        return bool(self.record_ids) and self.record_ids[0] == self.record_id

    @property
    def neighbours(self) -> list[str]:
        """The results other than the query record."""
        return [r for r in self.record_ids if r != self.record_id]


@dataclass(frozen=True)
class Chunk:
    """One upload request: chunk ``index`` (0-based) of ``total``, rows ``start:stop``, its JSON ``body``."""

    index: int
    total: int
    start: int
    stop: int
    body: str

    @property
    def count(self) -> int:
        return self.stop - self.start

    @property
    def label(self) -> str:
        """``chunk 3/10 (vectors 2001-3000)``: how messages name it, counting from 1."""
        return f"chunk {self.index + 1}/{self.total} (vectors {self.start + 1}-{self.stop})"


def check_vectors(ids: Sequence[Any], vectors: Any) -> tuple[list[str], Any]:
    """Check ids and vectors before anything is sent; returns ``(ids as strings, the vectors as an array)``.

    One vector per id, ids distinct, every value finite, no zero vector. An array (``np.memmap`` too) is read
    in blocks of :data:`_CHECK_BLOCK` rows, never copied whole; nested lists are converted once.
    """
    arr = vectors if hasattr(vectors, "shape") and hasattr(vectors, "__getitem__") else np.asarray(vectors, np.float64)
    shape = tuple(arr.shape)
    if len(shape) != 2 or shape[0] == 0 or shape[1] == 0:
        raise PushError(f"vectors must be a non-empty n x d array, got shape {shape}")
    if len(ids) != shape[0]:
        raise PushError(f"{len(ids)} ids but {shape[0]} vectors")
    ids_s = [str(i) for i in ids]
    if len(set(ids_s)) != len(ids_s):
        raise PushError("duplicate record ids: each record must get exactly one vector")
    finite, zeros = True, 0
    for lo in range(0, shape[0], _CHECK_BLOCK):
        block = np.asarray(arr[lo:lo + _CHECK_BLOCK], dtype=np.float64)
        finite = finite and bool(np.isfinite(block).all())
        zeros += int((np.linalg.norm(block, axis=1) == 0).sum()) if finite else 0
    if not finite:
        raise PushError("vectors hold NaN or infinite values")
    if zeros:
        raise PushError(f"{zeros} zero vector(s) cannot be L2-normalised")
    return ids_s, arr


def iter_chunks(ids: Sequence[str], vectors: Any, *, chunk_size: int, tensor_format: str = "json") -> Iterator[Chunk]:
    """The upload requests of checked input (:func:`check_vectors`), built one at a time: rows L2-normalised
    and rounded to 7 places (float32 precision, a third of the JSON of full reprs). ``tensor_format``
    ``"json"`` sends ``data``, a list of floats; ``"b64"`` sends ``data_b64``, base64 of little-endian float32.
    """
    if chunk_size < 1:
        raise ConfigError(f"chunk_size must be at least 1, got {chunk_size}")
    if tensor_format not in TENSOR_FORMATS:
        raise ConfigError(f"tensor_format must be 'json' or 'b64', got {tensor_format!r}")
    n = len(ids)
    total = math.ceil(n / chunk_size)
    for k in range(total):
        lo, hi = k * chunk_size, min(n, (k + 1) * chunk_size)
        block = np.asarray(vectors[lo:hi], dtype=np.float64)
        unit = np.round(block / np.linalg.norm(block, axis=1, keepdims=True), 7)
        rows = [_dumps(_tensor(ids[lo + i], row, tensor_format)) for i, row in enumerate(unit)]
        yield Chunk(k, total, lo, hi, _join(k, rows))


_ENCODER = json.JSONEncoder(separators=(",", ":"))


def _dumps(value: Any) -> str:
    return _ENCODER.encode(value)


def _join(index: int, rows: list[str]) -> str:
    """``{"chunk": index, "tensors": [...]}``, byte for byte ``json.dumps`` of the whole, compact; built row by
    row, so no row's floats outlive its text."""
    return f'{{"chunk":{int(index)},"tensors":[{",".join(rows)}]}}'


def _tensor(record_id: str, row: np.ndarray, tensor_format: str) -> dict[str, Any]:
    if tensor_format == "b64":
        return {"record_id": record_id, "data_b64": base64.b64encode(row.astype("<f4").tobytes()).decode("ascii")}
    return {"record_id": record_id, "data": row.tolist()}


class PushExtension(Transport):
    """The push extension's routes, on top of the transport (mixed into ``RefineryClient``)."""

    # ---- reading --------------------------------------------------------------------------------

    def list_embeddings(self, project_id: str | None = None) -> list[dict[str, Any]]:
        """``GET /api/project/{id}/embeddings``: the served embeddings."""
        pid = self.project(project_id)
        data = json_body(self.request("GET", f"/api/project/{pid}/embeddings", what="listing embeddings"),
                         what="embeddings")
        if isinstance(data, dict) and isinstance(data.get("embeddings"), list):
            data = data["embeddings"]
        if not isinstance(data, list):
            raise HostError("embedding list is not a JSON list")
        return data

    def offers_push_extension(self, project_id: str | None = None) -> bool:
        """Does this host take vectors through the ``api`` door? One read of ``GET /api/project/{id}/embeddings``:
        a JSON list means yes; ``404`` without ``PROJECT_NOT_FOUND`` or ``200 null`` means no
        (``docs/push-contract.md``). Auth and project errors are raised as on any call.
        """
        pid = self.project(project_id)
        resp = self.request("GET", f"/api/project/{pid}/embeddings", what="asking for the push extension",
                            ok=(200, 404, 405), null_ok=True)
        if resp.status_code != 200:
            if error_code(resp) == "PROJECT_NOT_FOUND":
                raise ProjectNotFoundError(f"asking for the push extension: project {pid} not found on {self.uri}")
            return False
        try:
            data = resp.json()
        except ValueError:
            return False
        if isinstance(data, dict):
            data = data.get("embeddings")
        return isinstance(data, list)

    def search_similar(self, embedding: str, record_id: str, *, limit: int | None = None,
                       project_id: str | None = None) -> SimilarRecords:
        """``POST /api/project/{id}/similarity`` (a read of the push extension, ``docs/push-contract.md``):
        as refinery's data browser, at most 100 records within the threshold, the query record first.
        ``limit`` (1..100) asks for fewer; None sends none (the host's default, 100).
        """
        pid = self.project(project_id)
        body: dict[str, Any] = {"embedding": embedding, "record_id": str(record_id)}
        if limit is not None:
            body["limit"] = int(limit)
        resp = self.request("POST", f"/api/project/{pid}/similarity", body=body, idempotent=True,  # a read
                            what="similarity search")
        data = json_body(resp, what="similarity result")
        ids = data.get("record_ids") if isinstance(data, dict) else None
        if not isinstance(ids, list):
            raise HostError("similarity result lacks record_ids")
        scores, threshold = data.get("scores"), data.get("threshold")
        return SimilarRecords(
            record_id=str(data.get("record_id", record_id)),
            record_ids=[str(i) for i in ids],
            scores=[float(x) for x in scores] if isinstance(scores, list) and len(scores) == len(ids) else [],
            threshold=(float(threshold) if isinstance(threshold, (int, float)) and not isinstance(threshold, bool)
                       else None),
            embedding=str(data.get("embedding", embedding)),
        )

    def similarity(self, embedding: str, record_id: str, *, limit: int | None = None,
                   project_id: str | None = None) -> list[str]:
        """The record ids of :meth:`search_similar`, in the host's order (the query first)."""
        return self.search_similar(embedding, record_id, limit=limit, project_id=project_id).record_ids

    # ---- the steps of a push ----------------------------------------------------------------------

    def create_embedding(self, project_id: str, spec: dict[str, Any]) -> dict[str, Any]:
        """Stage a new embedding version (not retried once the request may have reached the host)."""
        resp = self.request("POST", f"/api/project/{project_id}/embeddings", body=spec, idempotent=False,
                            what="creating the embedding")
        data = json_body(resp, what="created embedding")
        if not isinstance(data, dict) or not data.get("id"):
            raise PushError("the host did not return an id for the new embedding")
        return data

    def upload_tensors(self, project_id: str, embedding_id: str, chunk: Chunk) -> dict[str, Any]:
        """Upload one chunk (an upsert by record id, so retried freely)."""
        resp = self.request("PUT", f"/api/project/{project_id}/embeddings/{embedding_id}/tensors", body=chunk.body,
                            idempotent=True, what=f"uploading {chunk.label}")
        data = json_body(resp, what="chunk receipt")
        return data if isinstance(data, dict) else {}

    def finalize_embedding(self, project_id: str, embedding_id: str, count: int) -> dict[str, Any]:
        """Make the staged version the served one. Retried: the host answers a repeat with 200."""
        resp = self.request("POST", f"/api/project/{project_id}/embeddings/{embedding_id}/finalize",
                            body={"count": int(count)}, idempotent=True, what="finalizing the embedding")
        data = json_body(resp, what="finalize result")
        return data if isinstance(data, dict) else {}

    def delete_embedding(self, project_id: str, embedding_id: str) -> bool:
        """Drop a staged version; best effort, never raises. True when the host confirmed."""
        try:
            self.request("DELETE", f"/api/project/{project_id}/embeddings/{embedding_id}",
                         what="dropping the staged embedding", ok=(200, 202, 204, 404))
            return True
        except KernFinetuneError as exc:
            log.warning("could not drop staged embedding %s: %s", embedding_id, exc)
            return False

    # ---- the whole push ---------------------------------------------------------------------------

    def push_embedding(self, project_id: str | None, name: str | None, ids: Sequence[Any], vectors: Any, *,
                       attribute: str, model: str, chunk_size: int = 1000, progress: ProgressFn | None = None,
                       tensor_format: str = "json") -> PushResult:
        """Create, upload in streamed chunks, finalize; on any failure drop the staged version and raise.

        ``name`` None -> :func:`kern_finetune.refinery.columns.embedding_name`; ``tensor_format``: see
        :func:`iter_chunks`. Until finalize succeeds the previously served embedding of that name stays served.
        Raises :class:`PushError` (host refused; a chunk's failure names the chunk and its vectors),
        :class:`HostUnavailableError` (host kept failing), or :class:`AuthError` / :class:`ProjectNotFoundError`.
        """
        if tensor_format not in TENSOR_FORMATS:
            raise ConfigError(f"tensor_format must be 'json' or 'b64', got {tensor_format!r}")
        pid = self.project(project_id)
        say = progress or (lambda _msg: None)
        name = name or embedding_name(attribute, model=model)
        ids_s, arr = check_vectors(ids, vectors)
        if chunk_size < 1:
            raise ConfigError(f"chunk_size must be at least 1, got {chunk_size}")
        n, dim = len(ids_s), int(arr.shape[1])
        spec = {"name": name, "attribute": attribute, "type": "ON_ATTRIBUTE", "custom": True, "dimension": dim,
                "platform": PLATFORM, "model": model_short_name(model), "count": n}
        say(f"push: staging {name!r} ({n} vectors, {dim} dims) on {self.uri}")
        try:
            emb_id = str(self.create_embedding(pid, spec)["id"])
        except HostError as exc:
            raise _as_push_error(exc, name) from None
        chunks = iter_chunks(ids_s, arr, chunk_size=chunk_size, tensor_format=tensor_format)
        stage = "upload"
        try:
            n_chunks = self._upload(pid, emb_id, chunks, n, say)
            stage = "finalize"
            state = str(self.finalize_embedding(pid, emb_id, n).get("state", "FINISHED"))
            if state != "FINISHED":
                raise PushError(f"finalize left the embedding in state {state}")
        except Exception as exc:  # noqa: BLE001 - any failure must drop the staged version
            if stage == "finalize" and self._is_served(pid, emb_id):
                # the finalize went through but its answer was lost: the push did succeed
                log.info("finalize answer lost, but %s is served: push succeeded", name)
                say(f"push: {name!r} is served")
                return PushResult(emb_id, name, n, dim, math.ceil(n / chunk_size))
            raise self._failed(exc, pid, emb_id, name, stage, say) from None
        say(f"push: {name!r} is served ({n} vectors)")
        return PushResult(emb_id, name, n, dim, n_chunks, state)

    def _upload(self, pid: str, emb_id: str, chunks: Iterator[Chunk], n: int, say: ProgressFn) -> int:
        """Send the chunks as they are built; returns how many were sent."""
        sent = 0
        for chunk in chunks:
            receipt = self.upload_tensors(pid, emb_id, chunk)
            got = receipt.get("received", chunk.count)
            if got != chunk.count:
                raise PushError(f"{chunk.label}: host received {got} of {chunk.count} vectors")
            say(f"push: chunk {chunk.index + 1}/{chunk.total} ({chunk.stop} of {n} vectors)")
            sent += 1
        return sent

    def _failed(self, exc: Exception, pid: str, emb_id: str, name: str, stage: str,
                say: ProgressFn) -> KernFinetuneError:
        """Drop the staged version after a failed push; the error to raise."""
        dropped = self.delete_embedding(pid, emb_id)
        note = "staged version dropped" if dropped else "staged version left for the host to expire"
        say(f"push: failed during {stage} ({note}); the previous embedding stays served")
        if isinstance(exc, KernFinetuneError):
            return _as_push_error(exc, name, note=note)
        return PushError(self.scrub(f"pushing {name!r} failed during {stage}: {type(exc).__name__}: {exc} ({note})"))

    def _is_served(self, project_id: str, embedding_id: str) -> bool:
        """Best effort: is ``embedding_id`` now a served version?"""
        try:
            served = self.list_embeddings(project_id)
        except KernFinetuneError:
            return False
        return any(str(e.get("id")) == embedding_id and e.get("state", "FINISHED") == "FINISHED" for e in served)


def _as_push_error(exc: KernFinetuneError, name: str, note: str = "") -> KernFinetuneError:
    """Keep auth/project/availability errors as they are; any other host refusal becomes PushError."""
    if isinstance(exc, (AuthError, ProjectNotFoundError, HostUnavailableError, PushError)):
        if note and isinstance(exc, (HostUnavailableError, PushError)):
            return type(exc)(f"pushing {name!r}: {exc} ({note}; the previous embedding stays served)")
        return exc
    return PushError(f"the host refused embedding {name!r}: {exc}" + (f" ({note})" if note else ""))
