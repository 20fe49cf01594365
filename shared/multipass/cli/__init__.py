"""The ``multipass`` command line."""
