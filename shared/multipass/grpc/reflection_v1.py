"""``grpc.reflection.v1``: the stable reflection service, served beside ``v1alpha``.

grpcio-reflection ships only ``v1alpha``. The ``v1`` protocol is the same file under another package
(``grpc/reflection/v1/reflection.proto``: same messages, field numbers and rpc), so its descriptor is the
``v1alpha`` one renamed, added to the default pool so that reflection can describe it too, and its rpc is
served by the ``v1alpha`` servicer: the messages are identical on the wire.
"""

from __future__ import annotations

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection_pb2 as alpha

PACKAGE = "grpc.reflection.v1"
FILE_NAME = "grpc/reflection/v1/reflection.proto"
SERVICE_NAME = f"{PACKAGE}.ServerReflection"
_ALPHA_PACKAGE = alpha.DESCRIPTOR.package


def _renamed(type_name: str) -> str:
    prefix = f".{_ALPHA_PACKAGE}."
    return f".{PACKAGE}.{type_name.removeprefix(prefix)}" if type_name.startswith(prefix) else type_name


def _rename_message(message: descriptor_pb2.DescriptorProto) -> None:
    for field in message.field:
        if field.type_name:
            field.type_name = _renamed(field.type_name)
    for nested in message.nested_type:
        _rename_message(nested)


def v1_file_descriptor_proto() -> descriptor_pb2.FileDescriptorProto:
    """The ``grpc.reflection.v1`` file: the ``v1alpha`` file with its package and references renamed."""
    proto = descriptor_pb2.FileDescriptorProto()
    alpha.DESCRIPTOR.CopyToProto(proto)
    proto.name = FILE_NAME
    proto.package = PACKAGE
    proto.ClearField("options")
    for message in proto.message_type:
        _rename_message(message)
    for service in proto.service:
        for method in service.method:
            method.input_type = _renamed(method.input_type)
            method.output_type = _renamed(method.output_type)
    return proto


def register_v1_descriptor(pool: descriptor_pool.DescriptorPool | None = None) -> None:
    """Add the ``v1`` file to ``pool`` (the default pool) once, so reflection can describe the service."""
    pool = pool or descriptor_pool.Default()
    try:
        pool.FindFileByName(FILE_NAME)
    except KeyError:
        pool.AddSerializedFile(v1_file_descriptor_proto().SerializeToString())


def add_reflection_v1_to_server(servicer, server: grpc.aio.Server) -> None:
    """Serve ``grpc.reflection.v1.ServerReflection/ServerReflectionInfo`` with a ``v1alpha`` servicer."""
    register_v1_descriptor()
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=alpha.ServerReflectionRequest.FromString,
        response_serializer=alpha.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE_NAME, {"ServerReflectionInfo": handler}),)
    )
