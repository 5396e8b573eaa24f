"""A replay of refinery-gateway's project import, as far as it concerns embeddings.

Transcribed from code-kern-ai/refinery-gateway **v1.17.0**:

- ``util/file.py``, ``zip_to_json``: the first member of the zip, ``json.loads(...decode())``;
- ``controller/transfer/project_transfer_manager.py``, ``import_file``: attributes and records get new
  ids (``attribute_ids_by_old_id``, ``attribute_ids_by_old_name``, ``record_ids``), then the embedding loop
  with ``__transform_embedding_by_name`` (only when ``platform`` is missing) and
  ``__get_attribute_name_from_embedding_name`` (only when ``attribute_id`` is missing), ``state="FINISHED"``,
  then the tensor loop (``embedding.create_tensor`` with the mapped record and embedding ids);
- same file, ``__post_processing_import_threaded``: no ``embedding_tensors_data`` -> ``recreate_embeddings``;
  else ``request_tensor_upload`` for each embedding in order, through ``service_requests.post_call_or_raise``;
- the upload itself (refinery-embedder ``app.py`` ``upload_tensor_data`` -> ``util/request_util.py``
  ``post_embedding_to_neural_search`` -> refinery-neural-search ``neural_search/util.py``
  ``recreate_collection``): ``zip(*all_object)`` over the embedding's tensors fails for an embedding without
  tensors, and the Qdrant collection has one vector size (the first tensor's). The embedder posts to
  neural-search **without checking the answer** and itself answers 200, so a collection that fails does not
  raise in the gateway and does not stop the loop: that embedding stays FINISHED with no collection (not
  searchable) while the others upload (seen in a real run of the import).

Database effects are modelled as dicts; new ids are fresh uuids. Where the database would store a NULL
foreign key (a tensor whose record or embedding is unknown), the replay raises :class:`ReplayError`: a
check of ours, stricter than the gateway, because such a tensor is lost.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zipfile import ZipFile

__all__ = ["ReplayError", "ImportedEmbedding", "ImportResult", "zip_to_json", "replay_import", "replay_import_file"]


class ReplayError(Exception):
    """A tensor would be stored without its record or embedding (not a gateway exception)."""


@dataclass
class ImportedEmbedding:
    old_id: Any
    new_id: str
    name: str
    attribute_id: Any
    attribute_name: str | None
    custom: bool
    type: Any
    platform: Any
    model: Any
    tensors: list[tuple[str, Any, Any]] = field(default_factory=list)
    uploaded: bool = False
    """Whether neural-search built its collection (searchable); a FINISHED embedding may have none."""


@dataclass
class ImportResult:
    embeddings: list[ImportedEmbedding]
    post_processing: str  # "recreate_embeddings" or "upload_tensors"
    upload_error: str | None
    """The first embedding whose collection failed (the upload loop went on to the others)."""
    embedding_name_mapping: dict[str, str]

    def by_name(self, name: str) -> ImportedEmbedding:
        hits = [e for e in self.embeddings if e.name == name]
        assert len(hits) == 1, f"{len(hits)} imported embeddings named {name!r}: {[e.name for e in self.embeddings]}"
        return hits[0]


def zip_to_json(path: str | Path) -> dict[str, Any]:
    """``util/file.py`` ``zip_to_json`` without a key."""
    zip_file = ZipFile(path)
    file_name = zip_file.namelist()[0]
    return json.loads(zip_file.read(file_name).decode())


# --- project_transfer_manager.py (v1.17.0), verbatim apart from the enum values written out -------------

def transform_embedding_by_name(embedding_name: str) -> tuple[str, str, str]:
    splitted_name = embedding_name.split("-")
    attribute_name = splitted_name[0]
    embedding_type = splitted_name[1]
    model = "-".join(splitted_name[2:])
    if "bag-of-words" == model or "bag-of-characters" == model or "tf-idf" == model:
        platform = "python"  # enums.EmbeddingPlatform.PYTHON.value
    else:
        platform = "huggingface"  # enums.EmbeddingPlatform.HUGGINGFACE.value
    name = f"{attribute_name}-{embedding_type}-{platform}-{model}"
    return platform, model, name


def get_attribute_name_from_embedding_name(embedding_name: str) -> str:
    regex = "^(.+)-(?:classification|extraction).*"
    return re.match(regex, embedding_name).group(1)  # type: ignore[union-attr]


def replay_import(data: dict[str, Any]) -> ImportResult:
    attribute_ids_by_old_id: dict[Any, str] = {}
    attribute_ids_by_old_name: dict[Any, str] = {}
    attribute_names: dict[str, Any] = {}
    for attribute_item in data.get("attributes_data"):  # type: ignore[union-attr]
        new_id = str(uuid.uuid4())
        attribute_ids_by_old_id[attribute_item.get("id")] = new_id
        attribute_ids_by_old_name[attribute_item.get("name")] = new_id
        attribute_names[new_id] = attribute_item.get("name")

    record_ids: dict[Any, str] = {}
    for record_item in data.get("records_data"):  # type: ignore[union-attr]
        record_ids[record_item.get("id")] = str(uuid.uuid4())

    embedding_ids: dict[Any, str] = {}
    embedding_name_mapping: dict[str, str] = {}
    created: dict[str, ImportedEmbedding] = {}
    if data.get("embeddings_data"):
        for embedding_item in data.get("embeddings_data"):  # type: ignore[union-attr]
            if not embedding_item.get("platform"):
                platform, model, name = transform_embedding_by_name(embedding_item.get("name"))
                embedding_item["platform"] = platform
                embedding_item["model"] = model
                embedding_name_mapping[embedding_item.get("name")] = name
                embedding_item["name"] = name

            attribute_id = embedding_item.get("attribute_id")
            embedding_name = embedding_item.get("name")
            if attribute_id:
                attribute_id = attribute_ids_by_old_id.get(attribute_id)
            else:
                attribute_name = get_attribute_name_from_embedding_name(embedding_name)
                attribute_id = attribute_ids_by_old_name[attribute_name]

            new_id = str(uuid.uuid4())  # embedding.create(..., state="FINISHED", custom=... or False)
            created[new_id] = ImportedEmbedding(
                old_id=embedding_item.get("id"), new_id=new_id, name=embedding_name, attribute_id=attribute_id,
                attribute_name=attribute_names.get(attribute_id), custom=bool(embedding_item.get("custom")),
                type=embedding_item.get("type"), platform=embedding_item.get("platform"),
                model=embedding_item.get("model"),
            )
            embedding_ids[embedding_item.get("id")] = new_id
        if data.get("embedding_tensors_data"):
            for embedding_tensor_item in data.get("embedding_tensors_data"):  # type: ignore[union-attr]
                record_id = record_ids.get(embedding_tensor_item.get("record_id"))
                embedding_id = embedding_ids.get(embedding_tensor_item.get("embedding_id"))
                if record_id is None or embedding_id is None:
                    raise ReplayError(f"tensor without its record or embedding: {embedding_tensor_item.get('record_id')}")
                created[embedding_id].tensors.append(
                    (record_id, embedding_tensor_item.get("data"), embedding_tensor_item.get("sub_key"))
                )

    # __post_processing_import_threaded
    upload_error = None
    if not data.get("embedding_tensors_data"):
        post = "recreate_embeddings"
    else:
        post = "upload_tensors"
        for old_id in embedding_ids:
            emb = created[embedding_ids[old_id]]
            try:
                _upload_tensor_data(emb)
            except Exception as exc:  # neural-search's failure: the embedder does not check it, the loop goes on
                upload_error = upload_error or f"{emb.name}: {type(exc).__name__}: {exc}"
                continue
            emb.uploaded = True
    return ImportResult(list(created.values()), post, upload_error, embedding_name_mapping)


def _upload_tensor_data(emb: ImportedEmbedding) -> None:
    """refinery-neural-search ``recreate_collection``: one vector size, and at least one tensor."""
    record_ids, embeddings, sub_keys = zip(*emb.tensors)  # ValueError when there are none
    vector_size = len(embeddings[0])
    if any(not isinstance(e, list) or len(e) != vector_size for e in embeddings):
        raise ValueError(f"vectors of several sizes in one collection (first {vector_size})")


def replay_import_file(path: str | Path) -> ImportResult:
    return replay_import(zip_to_json(path))
