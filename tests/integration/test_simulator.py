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
        [
            *[sys.executable, "-m", "sim", "--state-dir", str(tmp_path)],
            *["--iam-token", "t1.cli-test", "--security-groups", "enpcli1,enpcli2"],
        ],
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
        groups = requests.get(info["admin_url"] + "/cloud/security-groups", timeout=5).json()
        assert groups == ["enpcli1", "enpcli2"]
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


def test_pages_see_vms_added_and_removed_between_them(simulator, folder):
    # The folder's id order is kept between pages; a change between two pages must show.
    first = simulator.admin(
        "POST", "/cloud/vms", json={"folder_id": folder, "count": 4, "name_prefix": "c-"}
    )
    stub = instances(simulator)
    page = stub.List(isvc.ListInstancesRequest(folder_id=folder, page_size=2), timeout=5)
    assert [i.id for i in page.instances] == sorted(vm["id"] for vm in first)[:2]
    gone = sorted(vm["id"] for vm in first)[3]
    simulator.admin("DELETE", f"/cloud/vms/{gone}")
    stub.List(isvc.ListInstancesRequest(folder_id=folder, page_size=2), timeout=5)
    later = simulator.admin(
        "POST", "/cloud/vms", json={"folder_id": folder, "count": 3, "name_prefix": "d-"}
    )
    rest, token = [], page.next_page_token
    while token:
        request = isvc.ListInstancesRequest(folder_id=folder, page_size=2, page_token=token)
        page = stub.List(request, timeout=5)
        rest += [i.id for i in page.instances]
        token = page.next_page_token
    after = sorted(vm["id"] for vm in first)[1]
    expected = sorted(i for i in {vm["id"] for vm in first + later} - {gone} if i > after)
    assert rest == expected


def test_a_listing_shows_every_change_since_the_last_one(simulator, folder):
    # The simulator keeps each VM's serialized list entry until the VM changes: a listing after
    # a change must show the change, and always what Get says.
    vm = add_vm(simulator, folder, "changing", guest=False)
    stub = instances(simulator)

    def listed() -> isvc.ListInstancesResponse:
        (instance,) = stub.List(isvc.ListInstancesRequest(folder_id=folder), timeout=5).instances
        assert instance == stub.Get(isvc.GetInstanceRequest(instance_id=vm["id"]), timeout=5)
        return instance

    first = listed()
    assert listed() == first  # unchanged, served from what the first listing kept
    moved = simulator.admin("POST", f"/cloud/vms/{vm['id']}/address", json={"network": "public"})
    nat = listed().network_interfaces[0].primary_v4_address.one_to_one_nat
    assert nat.address == moved["address"]
    stub.Delete(isvc.DeleteInstanceRequest(instance_id=vm["id"]), timeout=5)
    assert listed().status == first.Status.DELETING


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


def guest_url(simulator, address: str, path: str = "/health") -> str:
    return f"http://{address}:{simulator.info['agent_port']}{path}"


def test_a_running_vm_serves_its_guest_on_its_nat_and_its_vpc_address(simulator, folder):
    vm = add_vm(simulator, folder, "two-addresses")
    assert vm["address"] != vm["internal_address"]
    for address in (vm["address"], vm["internal_address"]):
        wait_until(
            lambda a=address: requests.get(guest_url(simulator, a), timeout=1).ok,
            10,
            what=f"the guest at {address}",
        )
    calls = simulator.admin("GET", "/guests/calls")["by_vm"][vm["id"]]
    assert {c["address"] for c in calls if c["status"] == 200} == {
        vm["address"],
        vm["internal_address"],
    }


@pytest.mark.parametrize("network", ["public", "internal"])
def test_the_admin_api_moves_a_vms_address_and_its_guest_follows(simulator, folder, network):
    field = "address" if network == "public" else "internal_address"
    vm = add_vm(simulator, folder, f"moving-{network}")
    old = vm[field]
    wait_until(lambda: requests.get(guest_url(simulator, old), timeout=1).ok, 10, what="boot")

    moved = simulator.admin("POST", f"/cloud/vms/{vm['id']}/address", json={"network": network})
    new = moved[field]
    assert new != old
    assert requests.get(guest_url(simulator, new), timeout=2).ok
    with pytest.raises(requests.ConnectionError):
        requests.get(guest_url(simulator, old), timeout=1)
    # The cloud API says so too.
    got = instances(simulator).Get(isvc.GetInstanceRequest(instance_id=vm["id"]), timeout=5)
    primary = got.network_interfaces[0].primary_v4_address
    assert (primary.one_to_one_nat.address if network == "public" else primary.address) == new
    log = [e for e in simulator.admin("GET", "/cloud/log") if e["vm_id"] == vm["id"]]
    assert log[-1]["event"] == "readdressed" and log[-1]["address"] == new

    # The freed address can go to another VM: the "new holder" of a moved VM's old address.
    other = add_vm(simulator, folder, f"holder-{network}")
    simulator.admin(
        "POST", f"/cloud/vms/{other['id']}/address", json={"network": network, "address": old}
    )
    wait_until(lambda: requests.get(guest_url(simulator, old), timeout=1).ok, 10, what="holder")
    calls = simulator.admin("GET", "/guests/calls")["by_vm"]
    assert calls[other["id"]][-1]["address"] == old


def test_moving_an_address_is_refused_for_bad_or_taken_addresses(simulator, folder):
    vm = add_vm(simulator, folder, "stays")
    other = add_vm(simulator, folder, "holds")

    def move(body: dict, vm_id: str = vm["id"]) -> requests.Response:
        url = f"{simulator.admin_url}/cloud/vms/{vm_id}/address"
        return requests.post(url, json=body, timeout=5)

    assert move({"address": other["address"]}).status_code == 409
    assert move({"network": "internal", "address": other["internal_address"]}).status_code == 409
    assert move({"address": "10.0.0.1"}).status_code == 400
    assert move({"address": "127.0.0.1"}).status_code == 400
    assert move({"address": "not an address"}).status_code == 400
    assert move({"network": "vpn"}).status_code == 400
    assert move({}, vm_id="fhmnosuchvm").status_code == 404
    assert simulator.admin("GET", f"/cloud/vms?folder_id={folder}")[0]["address"] == vm["address"]


def test_security_groups_exist_once_created_and_unknown_ones_fail_a_create(simulator, folder):
    created = simulator.admin("POST", "/cloud/security-groups", json={"id": "enpsimtestgroup"})
    assert created == {"id": "enpsimtestgroup"}
    assert "enpsimtestgroup" in simulator.admin("GET", "/cloud/security-groups")
    bad = requests.post(
        f"{simulator.admin_url}/cloud/security-groups", json={"id": "Bad Id"}, timeout=5
    )
    assert bad.status_code == 400

    def create(name: str, groups: list[str]):
        request = isvc.CreateInstanceRequest(
            folder_id=folder,
            name=name,
            zone_id="ru-central1-a",
            platform_id="standard-v3",
            resources_spec=isvc.ResourcesSpec(memory=2 << 30, cores=2),
            boot_disk_spec=isvc.AttachedDiskSpec(
                disk_spec=isvc.AttachedDiskSpec.DiskSpec(image_id="dark-image-sim")
            ),
            network_interface_specs=[
                isvc.NetworkInterfaceSpec(subnet_id="dark-subnet", security_group_ids=groups)
            ],
        )
        return instances(simulator).Create(request, timeout=5)

    create("with-group", ["enpsimtestgroup"])
    with pytest.raises(grpc.RpcError) as caught:
        create("with-unknown-group", ["enpsimtestgroup", "enpnosuchgroup"])
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "enpnosuchgroup" in caught.value.details()
    vms = {v["name"]: v for v in simulator.admin("GET", f"/cloud/vms?folder_id={folder}")}
    assert set(vms) == {"with-group"}
    assert vms["with-group"]["security_group_ids"] == ["enpsimtestgroup"]
