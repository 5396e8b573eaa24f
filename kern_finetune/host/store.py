"""The state of the local host in one SQLite file (:mod:`.db`): :class:`HostStore` holds one object per part."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .db import HostDB
from .labels import Labels
from .model_embeddings import ModelEmbeddings
from .project import Project
from .search import Search
from .users import Users
from .vectors import VectorCache

__all__ = ["HostStore"]


class HostStore:
    """The host's state: :attr:`project` (metadata, records, export), :attr:`users` (the one user, login
    sessions), :attr:`labels`, :attr:`models` (embeddings computed from a model folder, the model door) and
    :attr:`search` (the data browser's similarity search).

    Thread-safe (one connection guarded by a lock, :attr:`db`). Open with :meth:`open`.
    """

    def __init__(self, db: HostDB, models_volumes: Sequence[tuple[Path, str]] = ()) -> None:
        self.db = db
        self.project = Project(db)
        vectors = VectorCache(capacity=4)
        self.users = Users(db)
        self.labels = Labels(db, self.project)
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
        """Open (creating if needed) the state under ``data_dir``, importing ``export_path`` on first use (errors:
        :meth:`Project.load`); ``models_volumes``: the embedder's ``(host folder, path inside it)`` pairs."""
        store = cls(HostDB.open(Path(data_dir)), models_volumes)
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
