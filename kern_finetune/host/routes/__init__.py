"""The host's route families, each added to the app by one function (:func:`kern_finetune.host.app.create_app`):

- :mod:`.auth`: Kratos's login flow and ``sessions/whoami``;
- :mod:`.proxy`: the refinery-gateway-proxy routes (project details, export, associations);
- :mod:`.search`: the gateway's data-browser similarity search;
- :mod:`.extension`: kern-finetune's push extension (labels, embeddings, similarity, labeling sessions).

:mod:`.common` holds what they share: the response class, error bodies, the project and user checks.
"""
