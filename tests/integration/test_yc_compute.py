"""YcCompute against the YC simulator, through the real yandexcloud SDK over gRPC/TLS.

Each test works in a folder of its own, so it sees only its own VMs, and empties it afterwards.
"""

import ipaddress
import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from shared.adapters.yc import YcCompute
from shared.domain.errors import CloudConflict, CloudPermanent, CloudTransient
from shared.domain.records import VmSpec, VmStatus
from shared.settings import SettingsError, load_settings
from tests.support.processes import wait_until

MANAGED = {"managed-by": "dark-orchestrator", "deployment": "test"}


@pytest.fixture
def folder(simulator):
    folder_id = f"folder-{uuid.uuid4().hex[:12]}"
    yield folder_id
    simulator.admin("DELETE", "/cloud/vms", params={"folder_id": folder_id})


@pytest.fixture
def env(simulator, folder):
    return {**simulator.yc_env(), "YC_FOLDER_ID": folder}


@pytest.fixture
def compute(env):
    compute = YcCompute.from_settings(load_settings(env))
    compute.warm()
    return compute


@pytest.fixture
def faults(simulator):
    def inject(**fault):
        simulator.admin("POST", "/cloud/faults", json=fault)

    yield inject
    simulator.admin("DELETE", "/cloud/faults")


def spec(name: str | None = None, key: str | None = None) -> VmSpec:
    instance = uuid.uuid4()
    return VmSpec(
        name=name or f"dark-vm-{instance}",
        idempotency_key=key or str(uuid.uuid4()),
        labels={**MANAGED, "instance": str(instance)},
        image_id="dark-image-sim",
        user_data="#cloud-config\n{}\n",
    )


def finished(compute: YcCompute, operation_id: str):
    return wait_until(
        lambda: (state := compute.get_operation(operation_id)).done and state,
        timeout=10,
        what=f"operation {operation_id}",
    )


def vms_in(simulator, folder: str) -> list[dict]:
    return simulator.admin("GET", "/cloud/vms", params={"folder_id": folder})


def test_create_runs_a_vm_with_a_public_loopback_address(compute, simulator, folder):
    vm_spec = spec()
    started = compute.create_instance(vm_spec)
    assert not started.done
    assert started.provider_id

    done = finished(compute, started.operation_id)
    assert done.error is None
    assert done.provider_id == started.provider_id

    vm = compute.get_instance(started.provider_id)
    assert vm.status is VmStatus.RUNNING
    assert vm.name == vm_spec.name
    assert vm.labels == vm_spec.labels
    address = ipaddress.ip_address(vm.address)
    assert address in ipaddress.ip_network("127.0.0.0/8")
    assert str(address) != "127.0.0.1"
    assert vm.created_at.tzinfo is not None
    assert abs(datetime.now(UTC) - vm.created_at) < timedelta(minutes=1)
    assert [v["id"] for v in vms_in(simulator, folder)] == [vm.provider_id]


# --- the guest channel: security groups, and which address guests are called at -------------------


def new_security_group(simulator) -> str:
    return simulator.admin("POST", "/cloud/security-groups", json={})["id"]


def test_every_vm_interface_carries_the_configured_security_groups(env, simulator, folder):
    groups = [new_security_group(simulator), new_security_group(simulator)]
    compute = YcCompute.from_settings(
        load_settings({**env, "YC_SECURITY_GROUP_IDS": ",".join(groups)})
    )
    started = compute.create_instance(spec())
    assert finished(compute, started.operation_id).error is None
    [vm] = vms_in(simulator, folder)
    assert vm["security_group_ids"] == groups


def test_an_unknown_security_group_is_rejected_by_the_cloud_and_no_vm_is_made(
    env, simulator, folder
):
    compute = YcCompute.from_settings(
        load_settings({**env, "YC_SECURITY_GROUP_IDS": "enpnosuchgroup000000"})
    )
    with pytest.raises(CloudPermanent, match="enpnosuchgroup000000") as caught:
        compute.create_instance(spec())
    assert caught.value.code == "INVALID_ARGUMENT"
    assert vms_in(simulator, folder) == []


def test_the_guest_network_chooses_the_nat_or_the_vpc_address(env, simulator, folder):
    public = YcCompute.from_settings(load_settings(env))
    internal = YcCompute.from_settings(load_settings({**env, "DARK_GUEST_NETWORK": "internal"}))
    started = public.create_instance(spec())
    assert finished(public, started.operation_id).error is None
    [listed] = vms_in(simulator, folder)

    nat = public.get_instance(started.provider_id).address
    vpc = internal.get_instance(started.provider_id).address
    assert (nat, vpc) == (listed["address"], listed["internal_address"])
    assert nat != vpc
    loopback = ipaddress.ip_network("127.0.0.0/8")
    assert {ipaddress.ip_address(a) in loopback for a in (nat, vpc)} == {True}
    assert [v.address for v in internal.list_managed(MANAGED)] == [vpc]
    assert internal.find_by_name(listed["name"]).address == vpc
    # The simulated guest answers on both, as dark-agent listens on every interface.
    port = simulator.info["agent_port"]
    for address in (nat, vpc):
        wait_until(
            lambda a=address: requests.get(f"http://{a}:{port}/health", timeout=1).ok,
            10,
            what=f"the guest at {address}",
        )


def test_the_same_idempotency_key_returns_the_same_operation_and_one_vm(compute, simulator, folder):
    vm_spec = spec()
    first = compute.create_instance(vm_spec)
    second = compute.create_instance(vm_spec)
    assert second.operation_id == first.operation_id
    assert second.provider_id == first.provider_id

    finished(compute, first.operation_id)
    again = compute.create_instance(vm_spec)
    assert again.operation_id == first.operation_id
    assert again.done
    assert len(vms_in(simulator, folder)) == 1


def test_list_managed_finds_exactly_our_vms_among_2500_across_pages(compute, simulator, folder):
    def bulk(count: int, prefix: str, labels: dict) -> set[str]:
        body = {"folder_id": folder, "count": count, "name_prefix": prefix, "labels": labels}
        return {vm["id"] for vm in simulator.admin("POST", "/cloud/vms", json=body)}

    ours = bulk(7, "ours-", MANAGED)
    bulk(1200, "theirs-", {**MANAGED, "deployment": "other"})
    bulk(1293, "plain-", {})
    lists_before = simulator.admin("GET", "/cloud/calls").get("List", 0)

    found = list(compute.list_managed(MANAGED))

    assert {vm.provider_id for vm in found} == ours
    assert len(found) == len(ours)
    assert all(vm.labels["deployment"] == "test" for vm in found)
    assert simulator.admin("GET", "/cloud/calls")["List"] - lists_before == 3  # 1000+1000+500


def test_a_failed_list_page_is_the_domain_error_and_the_listing_stops(compute, faults):
    faults(method="List", code="UNAVAILABLE", where="rpc", count=1)
    with pytest.raises(CloudTransient) as caught:
        list(compute.list_managed(MANAGED))
    assert caught.value.code == "UNAVAILABLE"


def test_delete_then_delete_again_reports_already_gone(compute, simulator, folder):
    created = compute.create_instance(spec())
    finished(compute, created.operation_id)

    deleting = compute.delete_instance(created.provider_id)
    assert deleting is not None
    assert deleting.provider_id == created.provider_id
    # A repeated delete while the first runs is the same request: the same operation.
    assert compute.delete_instance(created.provider_id).operation_id == deleting.operation_id
    assert finished(compute, deleting.operation_id).error is None

    assert compute.delete_instance(created.provider_id) is None
    assert compute.get_instance(created.provider_id) is None
    assert vms_in(simulator, folder) == []
    log = [e for e in simulator.admin("GET", "/cloud/log") if e["vm_id"] == created.provider_id]
    assert [(e["event"], e["by"]) for e in log] == [("created", "api"), ("deleted", "api")]


def test_a_delete_retried_after_a_failed_operation_starts_a_new_one(
    compute, simulator, folder, faults
):
    created = compute.create_instance(spec())
    finished(compute, created.operation_id)
    faults(method="Delete", code="UNAVAILABLE", where="operation", count=1)

    failed = compute.delete_instance(created.provider_id)
    assert isinstance(finished(compute, failed.operation_id).error, CloudTransient)
    assert compute.get_instance(created.provider_id).status == "RUNNING"

    retried = compute.delete_instance(created.provider_id)
    assert retried.operation_id != failed.operation_id
    assert finished(compute, retried.operation_id).error is None
    assert compute.delete_instance(created.provider_id) is None
    assert vms_in(simulator, folder) == []


def test_quota_exhausted_inside_the_operation_is_transient_and_leaves_no_vm(
    compute, simulator, folder, faults
):
    faults(method="Create", code="RESOURCE_EXHAUSTED", where="operation", count=1)
    started = compute.create_instance(spec())

    done = finished(compute, started.operation_id)

    assert isinstance(done.error, CloudTransient)
    assert done.error.code == "RESOURCE_EXHAUSTED"
    assert "cloud quota exceeded" in str(done.error)
    assert compute.get_instance(started.provider_id) is None
    assert vms_in(simulator, folder) == []


def test_unavailable_on_the_rpc_is_transient_and_a_retry_creates_one_vm(
    compute, simulator, folder, faults
):
    faults(method="Create", code="UNAVAILABLE", where="rpc", count=1)
    vm_spec = spec()

    with pytest.raises(CloudTransient) as caught:
        compute.create_instance(vm_spec)
    assert caught.value.code == "UNAVAILABLE"

    retried = compute.create_instance(vm_spec)
    assert finished(compute, retried.operation_id).error is None
    assert len(vms_in(simulator, folder)) == 1


@pytest.mark.parametrize(
    ("code", "error"),
    [
        ("DEADLINE_EXCEEDED", CloudTransient),
        ("INTERNAL", CloudTransient),
        ("PERMISSION_DENIED", CloudPermanent),
        ("INVALID_ARGUMENT", CloudPermanent),
        ("FAILED_PRECONDITION", CloudPermanent),
    ],
)
def test_rpc_errors_map_to_domain_errors(compute, faults, code, error):
    faults(method="Get", code=code, where="rpc", count=1)
    with pytest.raises(error) as caught:
        compute.get_instance("fhm00000000000000000")
    assert caught.value.code == code


def test_a_reused_name_conflicts_and_find_by_name_adopts_the_existing_vm(compute):
    first = compute.create_instance(spec())
    name = compute.get_instance(first.provider_id).name

    with pytest.raises(CloudConflict) as caught:
        compute.create_instance(spec(name=name))
    assert caught.value.code == "ALREADY_EXISTS"

    found = compute.find_by_name(name)
    assert found.provider_id == first.provider_id
    assert compute.find_by_name("dark-vm-nobody") is None
    assert compute.find_by_name('bad"name') is None


def test_a_wrong_iam_token_is_permanent(env):
    compute = YcCompute.from_settings(load_settings({**env, "YC_IAM_TOKEN": "t1.wrong"}))
    with pytest.raises(CloudPermanent) as caught:
        compute.get_instance("fhm00000000000000000")
    assert caught.value.code == "UNAUTHENTICATED"
    assert "t1.wrong" not in str(caught.value)


def test_get_of_an_unknown_vm_is_none(compute):
    assert compute.get_instance("fhm00000000000000000") is None


def test_a_service_account_key_is_exchanged_for_a_token(env, tmp_path):
    private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    key_file = tmp_path / "sa-key.json"
    key_file.write_text(
        json.dumps({"id": "ajekey", "service_account_id": "ajesa", "private_key": pem})
    )
    settings = load_settings({**env, "YC_IAM_TOKEN": "", "YC_SA_KEY_FILE": str(key_file)})

    assert YcCompute.from_settings(settings).get_instance("fhm00000000000000000") is None


def test_credentials_are_required_up_front(env):
    with pytest.raises(SettingsError, match="YC_SA_KEY_FILE"):
        YcCompute.from_settings(load_settings({**env, "YC_IAM_TOKEN": ""}))


@pytest.mark.parametrize("content", ["not json", '{"id": "ajekey"}'])
def test_an_unusable_service_account_key_is_permanent(env, tmp_path, content):
    key_file = tmp_path / "sa-key.json"
    key_file.write_text(content)
    settings = load_settings({**env, "YC_IAM_TOKEN": "", "YC_SA_KEY_FILE": str(key_file)})
    with pytest.raises(CloudPermanent, match=r"(?i)key"):
        YcCompute.from_settings(settings).warm()
