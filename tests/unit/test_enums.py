"""The string enums keep the strings they replaced: they compare equal to them and serialise as
them, so run records, metrics and logs read as before."""

import json

from yandex.cloud.compute.v1 import instance_pb2

from shared.domain.records import VmStatus
from shared.service_layer.reconcile import ActionKind


def test_vm_status_names_every_status_of_the_cloud_api():
    assert set(instance_pb2.Instance.Status.keys()) == {s.value for s in VmStatus} - {"UNKNOWN"}


def test_a_cloud_status_this_code_does_not_know_is_unknown_neither_running_nor_deleting():
    assert VmStatus.from_cloud("RUNNING") is VmStatus.RUNNING
    assert VmStatus.from_cloud("HIBERNATING") is VmStatus.UNKNOWN
    assert VmStatus.UNKNOWN not in (VmStatus.RUNNING, VmStatus.DELETING)


def test_enum_members_are_their_strings():
    assert VmStatus.RUNNING == "RUNNING" and f"the VM is {VmStatus.STOPPED}" == "the VM is STOPPED"
    assert ActionKind.RESUME_TEARDOWN == "resume_teardown"
    assert json.dumps({ActionKind.ORPHAN: [VmStatus.DELETING]}) == '{"orphan": ["DELETING"]}'
