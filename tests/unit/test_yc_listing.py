"""YcCompute's listing over a fake stub: pages asked for ahead of decoding, errors on any page, an
early stop; and the decoding of a listed VM, built by hand for speed, which must say what
protobuf's own conversions say. (Against the simulator: tests/integration/test_yc_compute.py.)"""

import os
from datetime import UTC

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from yandex.cloud.compute.v1 import instance_pb2
from yandex.cloud.compute.v1 import instance_service_pb2 as isvc

from shared.adapters.yc import YcCompute, _Clients, _cloud_vm
from shared.domain.errors import CloudTransient
from shared.domain.records import VmStatus
from shared.settings import load_settings

OURS = {"managed-by": "dark-orchestrator", "deployment": "unit"}


class _Unavailable(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "the cloud went away"


class _Page:
    """A List call in flight: its answer (or error), and whether it was cancelled."""

    def __init__(self, log: list[str], number: int, answer) -> None:
        self.log, self.number, self.answer, self.cancelled = log, number, answer, False

    def result(self):
        self.log.append(f"page {self.number} answered")
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer

    def cancel(self) -> bool:
        self.cancelled = True
        return True


class _FakeList:
    def __init__(self, answers: list) -> None:
        self.answers, self.log, self.calls = answers, [], []

    def future(self, request, timeout):
        number = len(self.calls) + 1
        assert request.page_token == ("" if number == 1 else f"after-{number - 1}")
        self.log.append(f"page {number} asked")
        self.calls.append(_Page(self.log, number, self.answers[number - 1]))
        return self.calls[-1]


def page(number: int, names: list[str], *, last: bool = False) -> isvc.ListInstancesResponse:
    return isvc.ListInstancesResponse(
        instances=[instance_pb2.Instance(id=f"fhm-{n}", name=n, labels=OURS) for n in names],
        next_page_token="" if last else f"after-{number}",
    )


def listing_over(answers: list) -> tuple[YcCompute, _FakeList]:
    settings = load_settings({"YC_IAM_TOKEN": "t1.unit", "YC_FOLDER_ID": "folder-unit"})
    compute = YcCompute(settings)
    stub = _FakeList(answers)
    compute._clients = _Clients(
        pid=os.getpid(), instances=type("Stub", (), {"List": stub})(), operations=None
    )
    return compute, stub


def test_the_next_page_is_asked_for_before_this_ones_vms_are_handed_out():
    compute, stub = listing_over([page(1, ["a", "b"]), page(2, ["c"], last=True)])
    vms = compute.list_managed(OURS)
    assert next(vms).name == "a"
    assert stub.log == ["page 1 asked", "page 1 answered", "page 2 asked"]
    assert [vm.name for vm in vms] == ["b", "c"]
    assert len(stub.calls) == 2  # one RPC per page, none after the last


def test_an_error_on_a_later_page_ends_the_listing_with_the_domain_error():
    compute, _ = listing_over([page(1, ["a"]), _Unavailable()])
    vms = compute.list_managed(OURS)
    assert next(vms).name == "a"
    with pytest.raises(CloudTransient, match="list VMs in folder folder-unit"):
        next(vms)


def test_a_listing_left_early_cancels_the_page_in_flight():
    compute, stub = listing_over([page(1, ["a", "b"]), page(2, ["c"], last=True)])
    vms = compute.list_managed(OURS)
    next(vms)
    vms.close()
    assert stub.calls[1].cancelled


@pytest.mark.parametrize(
    ("seconds", "nanos"),
    [(0, 0), (1_764_580_000, 0), (1_764_580_000, 999_999_999), (1_764_580_000, 1_500), (1, 999)],
)
def test_created_at_is_what_protobuf_makes_of_the_timestamp(seconds, nanos):
    instance = instance_pb2.Instance(
        id="fhm1", name="a", created_at=Timestamp(seconds=seconds, nanos=nanos)
    )
    assert _cloud_vm(instance, internal=False).created_at == instance.created_at.ToDatetime(
        tzinfo=UTC
    )


def test_a_vm_without_a_creation_time_has_none():
    assert _cloud_vm(instance_pb2.Instance(id="fhm1"), internal=False).created_at is None


def test_every_cloud_status_maps_by_name_and_an_unknown_number_to_unknown():
    for name, number in instance_pb2.Instance.Status.items():
        vm = _cloud_vm(instance_pb2.Instance(id="fhm1", status=number), internal=False)
        assert vm.status is VmStatus.from_cloud(name)
    future = instance_pb2.Instance(id="fhm1", status=999)  # a status a newer API added
    assert _cloud_vm(future, internal=False).status is VmStatus.UNKNOWN
