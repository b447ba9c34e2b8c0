"""The YC API over gRPC/TLS: endpoint discovery, IAM, Compute instances and operations.

Real protobuf messages and real status codes, so the unmodified `yandexcloud` SDK runs its whole
code path against it: discovery over TLS, per-service channels, bearer tokens.
"""

import functools
import secrets
import time
from concurrent import futures
from pathlib import Path

import grpc
import jwt
from google.protobuf import empty_pb2
from google.rpc import status_pb2
from yandex.cloud.compute.v1 import instance_pb2
from yandex.cloud.compute.v1 import instance_service_pb2 as isvc
from yandex.cloud.compute.v1 import instance_service_pb2_grpc as isvc_grpc
from yandex.cloud.endpoint import api_endpoint_pb2
from yandex.cloud.endpoint import api_endpoint_service_pb2 as esvc
from yandex.cloud.endpoint import api_endpoint_service_pb2_grpc as esvc_grpc
from yandex.cloud.iam.v1 import iam_token_service_pb2 as iam
from yandex.cloud.iam.v1 import iam_token_service_pb2_grpc as iam_grpc
from yandex.cloud.operation import operation_pb2
from yandex.cloud.operation import operation_service_pb2_grpc as osvc_grpc
from yandexcloud._sdk import _supported_modules

from sim.model import ApiError, Operation, Vm
from sim.world import World

# Discovery and token exchange are the two calls the SDK makes without a bearer token.
_UNAUTHENTICATED_SERVICES = (
    "/yandex.cloud.endpoint.ApiEndpointService/",
    "/yandex.cloud.iam.v1.IamTokenService/",
)
_MAX_METADATA_BYTES = 512 * 1024
IAM_TOKEN_LIFETIME_SECS = 12 * 3600
# ListInstancesResponse.instances: field 1, length-delimited.
_INSTANCES_TAG = bytes([1 << 3 | 2])


def _timestamp(target, ts: float) -> None:
    target.FromNanoseconds(int(ts * 1e9))


def instance_message(vm: Vm, *, full: bool) -> instance_pb2.Instance:
    nat = (
        instance_pb2.OneToOneNat(address=vm.address, ip_version=instance_pb2.IpVersion.IPV4)
        if vm.address
        else None
    )
    message = instance_pb2.Instance(
        id=vm.id,
        folder_id=vm.folder_id,
        name=vm.name,
        labels=vm.labels,
        zone_id=vm.zone_id,
        platform_id=vm.platform_id,
        resources=instance_pb2.Resources(
            memory=vm.memory, cores=vm.cores, core_fraction=vm.core_fraction
        ),
        status=instance_pb2.Instance.Status.Value(vm.status),
        fqdn=f"{vm.id}.auto.internal",
        network_interfaces=[
            instance_pb2.NetworkInterface(
                index="0",
                subnet_id=vm.subnet_id,
                security_group_ids=vm.security_group_ids,
                primary_v4_address=instance_pb2.PrimaryAddress(
                    address=vm.internal_address, one_to_one_nat=nat
                ),
            )
        ],
        # YC returns metadata (user-data, ssh keys) only to a FULL view.
        metadata=vm.metadata if full else None,
    )
    _timestamp(message.created_at, vm.created_at)
    return message


def _listed(vm: Vm) -> bytes:
    """The VM as one entry of ListInstancesResponse.instances (field 1), serialized: its tag,
    its length and the message (the concatenation of entries is the repeated field)."""
    message = instance_message(vm, full=False).SerializeToString()
    return _INSTANCES_TAG + _varint(len(message)) + message


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def operation_message(op: Operation) -> operation_pb2.Operation:
    message = operation_pb2.Operation(
        id=op.id,
        description=f"{op.kind.capitalize()} instance",
        created_by="sim",
        done=op.done,
    )
    _timestamp(message.created_at, op.created_at)
    _timestamp(message.modified_at, op.modified_at)
    if op.kind == "create":
        message.metadata.Pack(isvc.CreateInstanceMetadata(instance_id=op.vm_id))
    else:
        message.metadata.Pack(isvc.DeleteInstanceMetadata(instance_id=op.vm_id))
    if op.error:
        code, text = op.error
        message.error.CopyFrom(status_pb2.Status(code=grpc.StatusCode[code].value[0], message=text))
    elif op.done and op.result is not None:
        message.response.Pack(instance_message(op.result, full=False))
    elif op.done:
        message.response.Pack(empty_pb2.Empty())
    return message


def _api(method: str):
    """Count the call, apply injected RPC faults, and turn ApiError into a gRPC status."""

    def decorate(handler):
        @functools.wraps(handler)
        def wrapper(self, request, context):
            try:
                self.world.rpc_call(method)
                return handler(self, request, context)
            except ApiError as exc:
                if exc.code == "RESOURCE_EXHAUSTED":
                    self.world.count_exhausted()
                context.abort(grpc.StatusCode[exc.code], exc.message)

        return wrapper

    return decorate


def _idempotency_key(context: grpc.ServicerContext) -> str | None:
    return dict(context.invocation_metadata()).get("idempotency-key") or None


def _invalid(message: str) -> ApiError:
    return ApiError("INVALID_ARGUMENT", f"Illegal argument {message}")


def _vm_from_request(request: isvc.CreateInstanceRequest) -> Vm:
    """Check the request the way YC does for the fields we model, and describe the new VM."""
    for field in ("folder_id", "zone_id", "platform_id"):
        if not getattr(request, field):
            raise _invalid(f"{field}: required")
    resources = request.resources_spec
    if resources.cores <= 0 or resources.memory <= 0:
        raise _invalid("resources_spec: cores and memory are required")
    disk = request.boot_disk_spec
    if not (disk.disk_id or disk.disk_spec.image_id or disk.disk_spec.snapshot_id):
        raise _invalid("boot_disk_spec: an image, snapshot or disk is required")
    if not request.network_interface_specs or not request.network_interface_specs[0].subnet_id:
        raise _invalid("network_interface_specs: a subnet is required")
    metadata = dict(request.metadata)
    if sum(len(k) + len(v) for k, v in metadata.items()) >= _MAX_METADATA_BYTES:
        raise _invalid("metadata: must be less than 512 KB in total")
    return Vm(
        id="",
        folder_id=request.folder_id,
        name=request.name,
        labels=dict(request.labels),
        status="PROVISIONING",
        created_at=0.0,
        zone_id=request.zone_id,
        platform_id=request.platform_id,
        subnet_id=request.network_interface_specs[0].subnet_id,
        # Checked against the known groups by the world, under its lock.
        security_group_ids=list(request.network_interface_specs[0].security_group_ids),
        cores=resources.cores,
        memory=resources.memory,
        core_fraction=resources.core_fraction or 100,
        metadata=metadata,
    )


class InstanceService(isvc_grpc.InstanceServiceServicer):
    def __init__(self, world: World) -> None:
        self.world = world

    @_api("Create")
    def Create(self, request, context):
        op = self.world.create_vm(_vm_from_request(request), _idempotency_key(context))
        return operation_message(op)

    @_api("Delete")
    def Delete(self, request, context):
        return operation_message(
            self.world.delete_vm(request.instance_id, _idempotency_key(context))
        )

    @_api("Get")
    def Get(self, request, context):
        vm = self.world.get_vm(request.instance_id)
        return instance_message(vm, full=request.view == isvc.InstanceView.FULL)

    @_api("List")
    def List(self, request, context):
        # Each VM is serialized once, as its entry in the answer, until it changes (a listing of
        # 100k VMs built 100k messages in Python every time); the page is then parsed whole, in C.
        entries, token = self.world.list_rendered(
            request.folder_id, request.page_size, request.page_token, request.filter, _listed
        )
        response = isvc.ListInstancesResponse.FromString(b"".join(entries))
        response.next_page_token = token
        return response


class OperationService(osvc_grpc.OperationServiceServicer):
    def __init__(self, world: World) -> None:
        self.world = world

    @_api("OperationGet")
    def Get(self, request, context):
        return operation_message(self.world.get_operation(request.operation_id))


class ApiEndpointService(esvc_grpc.ApiEndpointServiceServicer):
    def __init__(self, address: str) -> None:
        # The SDK maps every stub to a service id through this table and looks the id up here:
        # advertising all of them lets any client resolve (only a few services are served).
        ids = sorted({service for _, service in _supported_modules} | {"iam", "operation"})
        self.endpoints = [api_endpoint_pb2.ApiEndpoint(id=i, address=address) for i in ids]

    def List(self, request, context):
        return esvc.ListApiEndpointsResponse(endpoints=self.endpoints)

    def Get(self, request, context):
        for endpoint in self.endpoints:
            if endpoint.id == request.api_endpoint_id:
                return endpoint
        context.abort(grpc.StatusCode.NOT_FOUND, f"endpoint {request.api_endpoint_id} not found")


class IamTokenService(iam_grpc.IamTokenServiceServicer):
    """Exchanges a service-account JWT for the simulator's token.

    The simulator holds no public keys, so it checks the JWT's shape (PS256, key id, issuer), not
    its signature: enough to run the SDK's service-account code path end to end.
    """

    def __init__(self, token: str) -> None:
        self.token = token

    def Create(self, request, context):
        try:
            header = jwt.get_unverified_header(request.jwt)
            claims = jwt.decode(request.jwt, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, f"invalid JWT: {exc}")
        if header.get("alg") != "PS256" or not header.get("kid") or not claims.get("iss"):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "JWT must be PS256 with kid and iss")
        response = iam.CreateIamTokenResponse(iam_token=self.token)
        _timestamp(response.expires_at, time.time() + IAM_TOKEN_LIFETIME_SECS)
        return response


class RequireIamToken(grpc.ServerInterceptor):
    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}"

        def deny(request, context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "The token is invalid")

        self._deny = grpc.unary_unary_rpc_method_handler(deny)

    def intercept_service(self, continuation, handler_call_details):
        if handler_call_details.method.startswith(_UNAUTHENTICATED_SERVICES):
            return continuation(handler_call_details)
        metadata = dict(handler_call_details.invocation_metadata)
        if secrets.compare_digest(metadata.get("authorization", ""), self._expected):
            return continuation(handler_call_details)
        return self._deny


def serve(world: World, token: str, cert: Path, key: Path, port: int) -> tuple[grpc.Server, int]:
    """Start the TLS gRPC server on loopback; returns (server, bound port)."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="yc-rpc"),
        interceptors=[RequireIamToken(token)],
    )
    credentials = grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])
    # "localhost" binds every loopback address it resolves to (127.0.0.1, and ::1 where it
    # exists), which is what a client resolving the advertised "localhost:PORT" may try.
    bound = server.add_secure_port(f"localhost:{port}", credentials)
    address = f"localhost:{bound}"
    # The generated .pyi marks every RPC abstract; at run time an RPC the simulator does not
    # implement answers UNIMPLEMENTED, which is what it should.
    isvc_grpc.add_InstanceServiceServicer_to_server(InstanceService(world), server)  # type: ignore[abstract]
    osvc_grpc.add_OperationServiceServicer_to_server(OperationService(world), server)  # type: ignore[abstract]
    esvc_grpc.add_ApiEndpointServiceServicer_to_server(ApiEndpointService(address), server)
    iam_grpc.add_IamTokenServiceServicer_to_server(IamTokenService(token), server)  # type: ignore[abstract]
    server.start()
    return server, bound
