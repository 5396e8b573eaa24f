"""The host's route families, each added to the app by one function (:func:`kern_finetune.host.app.create_app`)."""
