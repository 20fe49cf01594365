"""The developer commands of the ``multipass`` command line, registered through the ``multipass.cli``
entry points: ``parse``, ``segment``, and ``up``/``down``/``status``/``demo`` for the local stack."""
