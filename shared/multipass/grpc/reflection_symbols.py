"""The reflection servicer, finding the file of a method too.

The reflection spec names ``<package>.<service>[.<method>]`` among the symbols ``file_containing_symbol``
takes, and tools ask for methods (``grpcurl describe multipass.v1.Jobs.SubmitJob``), but the descriptor
pool behind grpcio-reflection finds files of services, messages, fields and enums only. A method's file is
its service's.
"""

from __future__ import annotations

from grpc_reflection.v1alpha import reflection


class ReflectionServicer(reflection.aio.ReflectionServicer):
    """grpcio-reflection's servicer, answering ``file_containing_symbol`` for methods as well."""

    def _file_containing_symbol(self, request, fully_qualified_name):
        answer = super()._file_containing_symbol(request, fully_qualified_name)
        if not answer.HasField("error_response"):
            return answer
        try:
            method = self._pool.FindMethodByName(fully_qualified_name)
        except KeyError:
            return answer
        return super()._file_containing_symbol(request, method.containing_service.full_name)
