"""Model sync: mirror a prefix of the models bucket into the node-local model directory (``mirror``), and
the command the pods' init containers run before a service starts (``command``,
``python -m multipass.model_sync``)."""
