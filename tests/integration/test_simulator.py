"""The YC simulator itself: its CLI contract, and the parts of YC's behaviour the adapter relies on
being modelled faithfully (filters, paging limits, views, auth, fault windows, guests).
"""

import json
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import grpc
import pytest
import requests
import yandexcloud
from yandex.cloud.compute.v1 import instance_service_pb2 as isvc
from yandex.cloud.compute.v1.instance_service_pb2_grpc import InstanceServiceStub

from tests.support.processes import spawn, stop_process, wait_until

INFO_KEYS = {"yc_endpoint", "yc_root_cert", "yc_iam_token", "agent_port", "admin_url"}


def instances(simulator, token: str | None = None) -> InstanceServiceStub:
    sdk = yandexcloud.SDK(
        iam_token=token or simulator.info["yc_iam_token"],
        endpoint=simulator.info["yc_endpoint"],
        root_certificates=Path(simulator.info["yc_root_cert"]).read_bytes(),
    )
    return sdk.client(InstanceServiceStub)


@pytest.fixture
def folder(simulator):
    folder_id = f"folder-{uuid.uuid4().hex[:12]}"
    yield folder_id
    simulator.admin("DELETE", "/cloud/vms", params={"folder_id": folder_id})


def add_vm(simulator, folder: str, name: str, **fields) -> dict:
    return simulator.admin("POST", "/cloud/vms", json={"folder_id": folder, "name": name, **fields})


def test_the_cli_prints_one_json_line_and_serves_until_sigterm(tmp_path):
    proc = spawn(
        [sys.executable, "-m", "sim", "--state-dir", str(tmp_path), "--iam-token", "t1.cli-test"],
        log_path=tmp_path / "sim.log",
        stdout=subprocess.PIPE,
    )
    try:
        info = json.loads(proc.stdout.readline())
        assert set(info) == INFO_KEYS
        assert info["yc_iam_token"] == "t1.cli-test"
        assert info["yc_endpoint"].startswith("localhost:")
        cert = Path(info["yc_root_cert"])
        assert cert.is_absolute()
        assert cert.read_text().startswith("-----BEGIN CERTIFICATE-----")
        assert stat.S_IMODE(cert.with_suffix(".key").stat().st_mode) == 0o600
        assert info["agent_port"] > 0
        health = requests.get(info["admin_url"] + "/health", timeout=5)
        assert health.status_code == 200
    finally:
        stop_process(proc)
    assert proc.returncode == 0
    assert proc.stdout.read() == b""


def test_unsupported_list_filters_are_rejected_like_yc(simulator, folder):
    stub = instances(simulator)
    for bad in (
        'labels.deployment = "test"',
        'name:"dark-vm-"',
        'name LIKE "dark-vm-%"',
        'name = "a" OR name = "b"',
        "description = 'x'",
    ):
        with pytest.raises(grpc.RpcError) as caught:
            stub.List(isvc.ListInstancesRequest(folder_id=folder, filter=bad), timeout=5)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, bad


def test_supported_list_filters_select_by_field(simulator, folder):
    for name in ("alpha", "beta", "gamma"):
        add_vm(simulator, folder, name, guest=False)
    add_vm(simulator, folder, "delta", status="STOPPED", guest=False)
    stub = instances(simulator)

    def names(text: str) -> set[str]:
        request = isvc.ListInstancesRequest(folder_id=folder, filter=text)
        return {i.name for i in stub.List(request, timeout=5).instances}

    assert names('name = "alpha"') == {"alpha"}
    assert names("name IN ('alpha', \"beta\")") == {"alpha", "beta"}
    assert names('name NOT IN ("alpha") AND status = "RUNNING"') == {"beta", "gamma"}
    assert names("status != 'RUNNING'") == {"delta"}


def test_page_size_is_capped_at_1000_and_pages_chain(simulator, folder):
    simulator.admin(
        "POST", "/cloud/vms", json={"folder_id": folder, "count": 5, "name_prefix": "p-"}
    )
    stub = instances(simulator)
    with pytest.raises(grpc.RpcError) as caught:
        stub.List(isvc.ListInstancesRequest(folder_id=folder, page_size=1001), timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    seen, token = [], ""
    while True:
        request = isvc.ListInstancesRequest(folder_id=folder, page_size=2, page_token=token)
        page = stub.List(request, timeout=5)
        seen += [i.id for i in page.instances]
        token = page.next_page_token
        if not token:
            break
    assert len(seen) == 5
    assert seen == sorted(seen)  # YC lists by id unless told otherwise


def test_metadata_is_returned_only_in_the_full_view(simulator, folder):
    stub = instances(simulator)
    request = isvc.CreateInstanceRequest(
        folder_id=folder,
        name="with-user-data",
        zone_id="ru-central1-a",
        platform_id="standard-v3",
        metadata={"user-data": "#cloud-config\n"},
        resources_spec=isvc.ResourcesSpec(memory=2 << 30, cores=2),
        boot_disk_spec=isvc.AttachedDiskSpec(
            disk_spec=isvc.AttachedDiskSpec.DiskSpec(image_id="dark-image-sim")
        ),
        network_interface_specs=[isvc.NetworkInterfaceSpec(subnet_id="dark-subnet")],
    )
    meta = isvc.CreateInstanceMetadata()
    stub.Create(request, timeout=5).metadata.Unpack(meta)

    basic = stub.Get(isvc.GetInstanceRequest(instance_id=meta.instance_id), timeout=5)
    full = stub.Get(
        isvc.GetInstanceRequest(instance_id=meta.instance_id, view=isvc.InstanceView.FULL),
        timeout=5,
    )
    assert dict(basic.metadata) == {}
    assert dict(full.metadata) == {"user-data": "#cloud-config\n"}

    with pytest.raises(grpc.RpcError) as caught:
        stub.Create(request, timeout=5)
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    request.name = "Not_A_Valid_Name"
    with pytest.raises(grpc.RpcError) as caught:
        stub.Create(request, timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_every_call_needs_the_iam_token(simulator, folder):
    with pytest.raises(grpc.RpcError) as caught:
        instances(simulator, token="t1.wrong").List(
            isvc.ListInstancesRequest(folder_id=folder), timeout=5
        )
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_a_timed_fault_fails_every_call_until_it_expires(simulator, folder):
    stub = instances(simulator)
    request = isvc.ListInstancesRequest(folder_id=folder)
    simulator.admin(
        "POST", "/cloud/faults", json={"method": "List", "code": "UNAVAILABLE", "seconds": 0.5}
    )
    try:
        for _ in range(2):
            with pytest.raises(grpc.RpcError) as caught:
                stub.List(request, timeout=5)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        time.sleep(0.6)
        assert list(stub.List(request, timeout=5).instances) == []
    finally:
        simulator.admin("DELETE", "/cloud/faults")


def test_a_vm_created_behind_our_back_runs_a_guest_until_removed(simulator, folder):
    vm = add_vm(simulator, folder, "orphan", labels={"managed-by": "dark-orchestrator"})
    url = f"http://{vm['address']}:{simulator.info['agent_port']}/health"
    wait_until(lambda: requests.get(url, timeout=1).status_code == 200, 10, what="guest boot")

    simulator.admin("DELETE", f"/cloud/vms/{vm['id']}")

    with pytest.raises(requests.ConnectionError):
        requests.get(url, timeout=1)
    log = [e for e in simulator.admin("GET", "/cloud/log") if e["vm_id"] == vm["id"]]
    assert [(e["event"], e["by"]) for e in log] == [("created", "admin"), ("deleted", "admin")]


def test_bulk_creation_of_2500_vms_is_quick(simulator, folder):
    started = time.monotonic()
    created = simulator.admin(
        "POST",
        "/cloud/vms",
        json={"folder_id": folder, "count": 2500, "name_prefix": "bulk-", "age_secs": 3600},
    )
    assert time.monotonic() - started < 3
    assert len(created) == 2500
    assert all(vm["status"] == "RUNNING" and vm["address"] for vm in created[:3])
    assert len({vm["address"] for vm in created}) == 2500
