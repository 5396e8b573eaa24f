"""Everything that speaks refinery's formats and API, and nothing that trains (no torch, no sklearn).

==============  ===========================================================================================
module          what it holds
==============  ===========================================================================================
``columns``     the column contract: records, task columns and their suffixes, value strings, embedding names
``reader``      reading input files (``.json``, ``.json.gz``, snapshot ``.zip``) under a size cap
``export``      the record export: parse it, find its labeling tasks
``snapshot``    project snapshots: read them as an export, write one with our embedding added
``transport``   HTTP to a refinery host: login, retries, re-login, errors with context, secrets masked
``api``         :class:`~kern_finetune.refinery.api.RefineryClient`: the real gateway's routes
``push``        the push extension (``docs/push-contract.md``): chunked, streamed upload of vectors
``gateway``     the Kratos browser login and the gateway's embedding routes with its cookie (the model door)
``embedder``    refinery-embedder's PCA-64 of a model's vectors, replayed
==============  ===========================================================================================
"""
