"""The state of the local refinery-compatible host: one project, its records, labels, users and embeddings.

Everything lives in one SQLite file (:mod:`.db` lists its tables); :class:`HostStore` opens it and holds
one object per part, each in its own module:

- :attr:`HostStore.project` (:mod:`.project`): the project's metadata and records, the first import, the
  project details and export;
- :attr:`HostStore.users` (:mod:`.users`): the one user, password check, login sessions;
- :attr:`HostStore.labels` (:mod:`.labels`): label writes and the SDK's associations;
- :attr:`HostStore.embeddings` (:mod:`.embeddings`): staged and served embedding versions;
- :attr:`HostStore.models` (:mod:`.model_embeddings`): embeddings the host computes from a model, as
  refinery's gateway queues them and its embedder runs them (the model door);
- :attr:`HostStore.search` (:mod:`.search`): similarity search and labeling sessions.

Errors meant for API callers are raised as :class:`~.api_errors.ApiError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .api_errors import ApiError, GatewayError
from .db import DB_FILE, HostDB
from .embeddings import STALE_STAGED_S, Embeddings
from .labels import Labels
from .model_embeddings import ModelEmbeddings
from .project import Project
from .search import Search
from .users import SESSION_TTL_S, Users
from .vectors import VectorCache

__all__ = ["ApiError", "GatewayError", "HostStore", "DB_FILE", "SESSION_TTL_S", "STALE_STAGED_S"]


class HostStore:
    """The host's state in SQLite; thread-safe (one connection guarded by a lock, :attr:`db`).

    Open with :meth:`open`; the first open of an empty ``data_dir`` imports ``export_path``.
    """

    def __init__(self, db: HostDB, data_dir: Path, models_volumes: Sequence[tuple[Path, str]] = ()) -> None:
        self.db = db
        self.data_dir = data_dir
        self.project = Project(db)
        vectors = VectorCache(capacity=4)
        self.users = Users(db)
        self.labels = Labels(db, self.project)
        self.embeddings = Embeddings(db, self.project, vectors)
        self.search = Search(db, self.project, vectors)
        self.models = ModelEmbeddings(db, self.project, vectors, models_volumes)

    @classmethod
    def open(
        cls,
        data_dir: str | Path,
        export_path: str | Path | None = None,
        *,
        id_attribute: str = "running_id",
        project_id: str | None = None,
        project_name: str | None = None,
        models_volumes: Sequence[tuple[Path, str]] = (),
    ) -> HostStore:
        """Open (creating if needed) the state under ``data_dir``; import ``export_path`` on first use.

        Raises :class:`ConfigError` when the data dir holds a different project than asked for, or when
        there is nothing to import; :class:`ExportError` when the export cannot be used. ``models_volumes``:
        ``(host folder, path inside the embedder)`` pairs, the volumes the embedder would have mounted.
        """
        data_dir = Path(data_dir)
        store = cls(HostDB.open(data_dir), data_dir, models_volumes)
        try:
            store.project.load(export_path, id_attribute=id_attribute, project_id=project_id,
                               project_name=project_name)
        except BaseException:
            store.close()
            raise
        return store

    def close(self) -> None:
        """Stop the embedding worker, then close the database connection."""
        self.models.close()
        self.db.close()

    @property
    def project_id(self) -> str:
        return self.project.project_id

    @property
    def record_count(self) -> int:
        return self.project.record_count
