"""The adapter's decoding of a listed VM: built by hand for speed, it must say what protobuf's own
conversions say."""

from datetime import UTC

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from yandex.cloud.compute.v1 import instance_pb2

from shared.adapters.yc import _cloud_vm
from shared.domain.records import VmStatus


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
