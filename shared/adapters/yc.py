"""YcCompute: the Compute port on Yandex Cloud, through the real `yandexcloud` SDK (gRPC over TLS).

Only the adapter knows about gRPC: every SDK or transport failure leaves it as a CloudError.

Process model: nothing is created at construction or import. The SDK and its channels are built on
first use in the current process (so a Celery worker builds its own after fork) or eagerly with
`warm()`, which a process should call before sharing the adapter across threads, because the SDK's
endpoint and channel caches are not thread-safe.

Retries: the SDK adds none unless given a retry policy or interceptor (its deprecated
RetryInterceptor puts a random idempotency key on calls that carry none), and we give it neither, so
one call here is one RPC. The pipeline retries transient errors itself, with the idempotency key
kept on the row, so a retried create returns the first operation instead of making a second VM.
"""

import json
import os
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import grpc
from yandex.cloud.compute.v1 import instance_pb2
from yandex.cloud.compute.v1 import instance_service_pb2 as isvc
from yandex.cloud.compute.v1.instance_service_pb2_grpc import InstanceServiceStub
from yandex.cloud.operation import operation_pb2
from yandex.cloud.operation.operation_service_pb2 import GetOperationRequest
from yandex.cloud.operation.operation_service_pb2_grpc import OperationServiceStub

from shared.domain.errors import (
    CloudConflict,
    CloudError,
    CloudNotFound,
    CloudPermanent,
    CloudQuotaExhausted,
    CloudTransient,
)
from shared.domain.records import CloudVm, OperationState, VmSpec, VmStatus
from shared.settings import Settings, SettingsError

PAGE_SIZE = 1000  # YC's maximum
_GIB = 1 << 30
# YC names: a name that does not match cannot exist, so it is never put into a filter.
_NAME_RE = re.compile(r"[a-z]([-_a-z0-9]{0,61}[a-z0-9])?")
# Deletes get a key derived from the VM id: a repeated delete of one VM is the same request.
_DELETE_KEYS = uuid.UUID("0b6d3c52-6a0e-4d47-9f0e-5c3f1d2a7e11")
# More failed deletes of one VM than the pipeline ever retries: walking that many replays is enough.
_MAX_DELETE_ATTEMPTS = 32

_TRANSIENT = {"UNAVAILABLE", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED", "ABORTED", "INTERNAL"}
_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}
_EXPLANATIONS = {
    "RESOURCE_EXHAUSTED": "cloud quota exceeded",
    "UNAVAILABLE": "cloud API unavailable",
    "DEADLINE_EXCEEDED": "cloud API did not answer in time",
    "ABORTED": "cloud aborted the request (concurrent change)",
    "INTERNAL": "cloud internal error",
    "NOT_FOUND": "not found in the cloud",
    "ALREADY_EXISTS": "already exists in the cloud",
    "PERMISSION_DENIED": "cloud permission denied (check the service account's roles)",
    "UNAUTHENTICATED": "cloud rejected the credentials (check YC_IAM_TOKEN / YC_SA_KEY_FILE)",
    "INVALID_ARGUMENT": "cloud rejected the request as invalid",
    "FAILED_PRECONDITION": "cloud refused the request in the resource's current state",
}

# RESOURCE_EXHAUSTED naming one of these quotas is not fixed by waiting (unlike the concurrent
# operations quota or the rate limit): the message names the quota the way YC's does.
_LASTING_QUOTAS = {
    "compute.instances.count": "instances per cloud",
    "compute.instanceCores.count": "vCPUs per cloud",
    "compute.instanceMemory.size": "RAM per cloud",
}
_QUOTA_RE = re.compile(r"\b(compute\.[A-Za-z]+\.[a-z]+)\b")

T = TypeVar("T")

# The domain's status for each of the API's status numbers (a number it does not know: UNKNOWN).
_VM_STATUS = {
    number: VmStatus.from_cloud(name) for name, number in instance_pb2.Instance.Status.items()
}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def cloud_error(code: str | int | grpc.StatusCode, details: str, action: str = "") -> CloudError:
    """The domain error for a cloud status, whether from an RPC or from a finished operation."""
    if isinstance(code, grpc.StatusCode):
        name = code.name
    elif isinstance(code, int):
        name = _CODE_NAMES.get(code, f"CODE_{code}")
    else:
        name = code
    explanation = _EXPLANATIONS.get(name, f"cloud error {name}")
    message = f"{explanation}: {details}" if details else explanation
    if action:
        message = f"{action}: {message}"
    if name == "RESOURCE_EXHAUSTED":
        quota = next((q for q in _QUOTA_RE.findall(details) if q in _LASTING_QUOTAS), None)
        if quota is not None:
            what = f"{action}: " if action else ""
            return CloudQuotaExhausted(
                f"{what}cloud quota {quota} ({_LASTING_QUOTAS[quota]}) exceeded: raise the "
                "quota or free capacity",
                quota=quota,
            )
    if name in _TRANSIENT:
        return CloudTransient(message, code=name)
    if name == "NOT_FOUND":
        return CloudNotFound(message, code=name)
    if name == "ALREADY_EXISTS":
        return CloudConflict(message, code=name)
    return CloudPermanent(message, code=name)


@dataclass(frozen=True)
class _Clients:
    pid: int
    instances: InstanceServiceStub
    operations: OperationServiceStub


class YcCompute:
    def __init__(self, settings: Settings) -> None:
        if settings.yc_iam_token and settings.yc_sa_key_file:
            raise SettingsError("YC_IAM_TOKEN: set either it or YC_SA_KEY_FILE, not both")
        if not (settings.yc_iam_token or settings.yc_sa_key_file):
            # Without credentials the SDK would quietly ask the VM metadata service instead.
            raise SettingsError("YC_SA_KEY_FILE: required to reach Yandex Cloud (or YC_IAM_TOKEN)")
        self._settings = settings
        self._timeout = settings.yc_rpc_timeout
        self._lock = threading.Lock()
        self._clients: _Clients | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> "YcCompute":
        return cls(settings)

    def warm(self) -> None:
        """Build the SDK, discover the endpoints and open the compute and operation channels."""
        self._connected()

    # --- the Compute port ---------------------------------------------------------------------

    def create_instance(self, spec: VmSpec) -> OperationState:
        s = self._settings
        metadata = {"user-data": spec.user_data} if spec.user_data is not None else {}
        request = isvc.CreateInstanceRequest(
            folder_id=s.yc_folder_id,
            name=spec.name,
            zone_id=s.yc_zone,
            platform_id=s.yc_platform,
            labels=spec.labels,
            metadata=metadata,
            resources_spec=isvc.ResourcesSpec(
                memory=s.yc_memory_gb * _GIB, cores=s.yc_cores, core_fraction=s.yc_core_fraction
            ),
            boot_disk_spec=isvc.AttachedDiskSpec(
                auto_delete=True,
                disk_spec=isvc.AttachedDiskSpec.DiskSpec(
                    type_id=s.yc_disk_type, size=s.yc_disk_gb * _GIB, image_id=spec.image_id
                ),
            ),
            network_interface_specs=[
                isvc.NetworkInterfaceSpec(
                    subnet_id=s.yc_subnet_id,
                    security_group_ids=list(s.yc_security_group_ids),
                    primary_v4_address_spec=isvc.PrimaryAddressSpec(
                        one_to_one_nat_spec=isvc.OneToOneNatSpec(
                            ip_version=instance_pb2.IpVersion.IPV4
                        )
                    ),
                )
            ],
        )
        operation = self._call(
            f"create VM {spec.name}",
            lambda c: c.instances.Create(
                request,
                timeout=self._timeout,
                metadata=(("idempotency-key", spec.idempotency_key),),
            ),
        )
        return _operation_state(operation)

    def get_operation(self, operation_id: str) -> OperationState:
        operation = self._call(
            f"read operation {operation_id}",
            lambda c: c.operations.Get(
                GetOperationRequest(operation_id=operation_id), timeout=self._timeout
            ),
        )
        return _operation_state(operation)

    def get_instance(self, provider_id: str) -> CloudVm | None:
        try:
            instance = self._call(
                f"read VM {provider_id}",
                lambda c: c.instances.Get(
                    isvc.GetInstanceRequest(instance_id=provider_id), timeout=self._timeout
                ),
            )
        except CloudNotFound:
            return None
        return self._cloud_vm(instance)

    def find_by_name(self, name: str) -> CloudVm | None:
        if not _NAME_RE.fullmatch(name):
            return None
        response = self._call(
            f"find VM {name}",
            lambda c: c.instances.List(
                isvc.ListInstancesRequest(
                    folder_id=self._settings.yc_folder_id, filter=f'name = "{name}"'
                ),
                timeout=self._timeout,
            ),
        )
        return next((self._cloud_vm(i) for i in response.instances if i.name == name), None)

    def list_managed(self, labels: dict[str, str]) -> Iterator[CloudVm]:
        # YC's list filter knows no labels: page through the whole folder, filter here.
        # The next page is asked for as soon as a page arrives, before its VMs are decoded: the
        # cloud prepares one page while this process decodes the other (a 100k folder is 100
        # pages). Still one RPC per page; an error on any page leaves the listing there.
        action = f"list VMs in folder {self._settings.yc_folder_id}"
        wanted = labels.items()
        internal = self._settings.guest_network == "internal"
        pending: grpc.Future | None = self._list_page(action, "")
        try:
            while pending is not None:
                response = self._page_result(action, pending)
                token = response.next_page_token
                pending = self._list_page(action, token) if token else None
                for instance in response.instances:
                    # Each VM's labels are copied out of the message once, compared in C.
                    vm_labels = dict(instance.labels)
                    if wanted <= vm_labels.items():
                        yield _cloud_vm(instance, internal=internal, labels=vm_labels)
        finally:
            if pending is not None:  # the caller stopped early, or a page failed to decode
                pending.cancel()

    def delete_instance(self, provider_id: str) -> OperationState | None:
        # The key is derived from the VM id, so repeating a delete returns the running operation.
        # The cloud replays a finished operation for a known key too: a successful one means the
        # VM is gone; a failed one would be replayed forever, so the next attempt gets a key of
        # its own, derived from that failure (still deterministic, still one delete per attempt).
        key = uuid.uuid5(_DELETE_KEYS, provider_id)
        for _ in range(_MAX_DELETE_ATTEMPTS):

            def delete(c: _Clients, key: uuid.UUID = key) -> operation_pb2.Operation:
                operation: operation_pb2.Operation = c.instances.Delete(
                    isvc.DeleteInstanceRequest(instance_id=provider_id),
                    timeout=self._timeout,
                    metadata=(("idempotency-key", str(key)),),
                )
                return operation

            try:
                state = _operation_state(self._call(f"delete VM {provider_id}", delete))
            except CloudNotFound:
                return None
            if not state.done:
                return state
            if state.error is None:
                return None
            key = uuid.uuid5(_DELETE_KEYS, f"{provider_id}/{state.operation_id}")
        return state  # a cloud that fails every delete at once: report the last failure

    # --- plumbing -------------------------------------------------------------------------

    def _cloud_vm(self, instance: instance_pb2.Instance) -> CloudVm:
        return _cloud_vm(instance, internal=self._settings.guest_network == "internal")

    def _call(self, action: str, rpc: Callable[[_Clients], T]) -> T:
        clients = self._connected()
        try:
            return rpc(clients)
        except grpc.RpcError as exc:
            raise cloud_error(exc.code(), exc.details() or "", action) from None

    def _list_page(self, action: str, page_token: str) -> grpc.Future:
        request = isvc.ListInstancesRequest(
            folder_id=self._settings.yc_folder_id, page_size=PAGE_SIZE, page_token=page_token
        )

        def start(c: _Clients) -> grpc.Future:
            future: grpc.Future = c.instances.List.future(request, timeout=self._timeout)
            return future

        return self._call(action, start)

    def _page_result(self, action: str, page: grpc.Future) -> isvc.ListInstancesResponse:
        try:
            # The generated stubs are untyped (grpc ships no types): name what comes back.
            response: isvc.ListInstancesResponse = page.result()
        except grpc.RpcError as exc:
            raise cloud_error(exc.code(), exc.details() or "", action) from None
        return response

    def _connected(self) -> _Clients:
        clients = self._clients
        if clients is not None and clients.pid == os.getpid():
            return clients
        with self._lock:
            clients = self._clients
            # A forked child inherits the parent's clients but not their gRPC state: rebuild.
            if clients is None or clients.pid != os.getpid():
                clients = self._clients = self._build()
            return clients

    def _build(self) -> _Clients:
        import yandexcloud  # ~0.2 s and tens of MB: only processes that talk to YC pay for it

        s = self._settings
        try:
            root_certificates = Path(s.yc_root_cert).read_bytes() if s.yc_root_cert else None
        except OSError as exc:
            raise CloudPermanent(f"YC_ROOT_CERT: cannot read {s.yc_root_cert}: {exc}") from None
        credentials: dict[str, Any] = {}
        if s.yc_iam_token:
            credentials["iam_token"] = s.yc_iam_token
        else:
            credentials["service_account_key"] = _read_sa_key(s.yc_sa_key_file or "")
        try:
            sdk = yandexcloud.SDK(
                # The SDK builds the JWT audience for a service-account key from this endpoint;
                # YC's documented audience has no port, and 443 is gRPC's default for TLS anyway.
                endpoint=s.yc_endpoint.removesuffix(":443"),
                root_certificates=root_certificates,
                **credentials,
            )
            # Creating a client runs endpoint discovery (an RPC) and opens the channel.
            return _Clients(
                pid=os.getpid(),
                instances=sdk.client(InstanceServiceStub),
                operations=sdk.client(OperationServiceStub),
            )
        except grpc.RpcError as exc:
            raise cloud_error(exc.code(), exc.details() or "", "discover YC endpoints") from None
        except (RuntimeError, ValueError) as exc:  # the SDK's way of rejecting a key or options
            raise CloudPermanent(f"cannot set up the YC SDK: {exc}") from None


def _read_sa_key(path: str) -> dict[str, Any]:
    try:
        key = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise CloudPermanent(f"YC_SA_KEY_FILE: cannot read a JSON key from {path}: {exc}") from None
    if not isinstance(key, dict):
        raise CloudPermanent(f"YC_SA_KEY_FILE: {path} is not a service-account key object")
    return key


def _operation_state(operation: operation_pb2.Operation) -> OperationState:
    provider_id = None
    for meta_type in (isvc.CreateInstanceMetadata, isvc.DeleteInstanceMetadata):
        if operation.metadata.Is(meta_type.DESCRIPTOR):
            meta = meta_type()
            operation.metadata.Unpack(meta)
            provider_id = meta.instance_id or None
    error = None
    if operation.done and operation.HasField("error") and operation.error.code:
        error = cloud_error(
            operation.error.code,
            operation.error.message,
            f"operation {operation.id} ({operation.description or 'cloud operation'})",
        )
    return OperationState(
        operation_id=operation.id, done=operation.done, provider_id=provider_id, error=error
    )


def _cloud_vm(
    instance: instance_pb2.Instance, *, internal: bool, labels: dict[str, str] | None = None
) -> CloudVm:
    """The VM as the domain sees it; its `address` is the one guests are called at
    (DARK_GUEST_NETWORK): the one-to-one NAT address, or with `internal` the VPC address.

    Reconcile makes one per VM of the folder (100k and more): the status comes from a table, the
    timestamp is built directly as protobuf's `ToDatetime` would build it, and `labels`, when
    given, are the instance's labels already copied out."""
    address = None
    if instance.network_interfaces:
        primary = instance.network_interfaces[0].primary_v4_address
        address = (primary.address if internal else primary.one_to_one_nat.address) or None
    created_at = None
    if instance.HasField("created_at"):
        ts = instance.created_at
        # A valid Timestamp's nanos are 0..999,999,999: the division rounds toward zero, as
        # ToDatetime's does.
        created_at = _EPOCH + timedelta(seconds=ts.seconds, microseconds=ts.nanos // 1000)
    return CloudVm(
        provider_id=instance.id,
        name=instance.name,
        status=_VM_STATUS.get(instance.status, VmStatus.UNKNOWN),
        labels=dict(instance.labels) if labels is None else labels,
        address=address,
        created_at=created_at,
    )
