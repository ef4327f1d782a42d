"""Flower's Deployment Engine on loopback: TLS, SuperNode authentication, and the same bytes as a simulation."""

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from fedcomp.run.config import resolve
from fedcomp.launch.deploy import (make_certificates, make_node_key, node_statuses, register_node, run_deployment,
                            start_superlink, start_supernode)
from fedcomp.run.presets import preset
from fedcomp.launch.simulation import launched, run_simulation
from fedcomp.records.results import read_rounds

PRESET = "topk-ef"  # a compressed preset (issue 6): sparse differential updates with error feedback
SMALL = {"num_clients": 3, "rounds": 2, "seed": 5}
PER_ROUND = ("bytes_up", "bytes_down", "dense_bytes_up", "dense_bytes_down", "accuracy", "loss")


def test_generated_certificates_chain_to_the_ca_and_name_loopback(tmp_path):
    certs = make_certificates(tmp_path)
    ca = x509.load_pem_x509_certificate(certs.ca.read_bytes())
    server = x509.load_pem_x509_certificate(certs.cert.read_bytes())
    server.verify_directly_issued_by(ca)
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in names.get_values_for_type(x509.DNSName)
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert oct(certs.key.stat().st_mode & 0o777) == "0o600"


def test_node_keys_are_what_flowers_cli_accepts(tmp_path):
    from flwr.cli.supernode.register import try_load_public_key
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key

    key = make_node_key(tmp_path, "node0")
    assert try_load_public_key(key.public)  # Flower's own check: an OpenSSH NIST-curve EC key
    private = load_ssh_private_key(key.private.read_bytes(), None)
    assert isinstance(private, ec.EllipticCurvePrivateKey) and private.curve.name == "secp384r1"


MARK = f"FEDCOMP_TEST_DEPLOY={uuid.uuid4().hex}"  # inherited by every process these tests start, and only those


@pytest.fixture(scope="module")
def both_engines(tmp_path_factory):
    name, _, value = MARK.partition("=")
    os.environ[name] = value
    config = resolve(preset(PRESET), SMALL)
    simulated_rows: list[dict] = []
    simulated = run_simulation(config, tmp_path_factory.mktemp("sim"), on_round=simulated_rows.append)
    deployed_rows: list[dict] = []
    try:
        deployed = run_deployment(config, tmp_path_factory.mktemp("deploy"), on_round=deployed_rows.append)
    finally:
        del os.environ[name]
    return (simulated, simulated_rows), (deployed, deployed_rows)


@pytest.mark.slow
def test_deployment_with_three_authenticated_supernodes_meters_the_simulations_payload_bytes(both_engines):
    (simulated, simulated_rows), (deployed, rows) = both_engines
    assert [r["round"] for r in rows] == [r["round"] for r in simulated_rows] == [1, 2]
    for sim_row, row in zip(simulated_rows, rows):
        for key in PER_ROUND:
            assert row[key] == sim_row[key], (row["round"], key)
        by_partition = {c["partition_id"]: c["bytes_up"] for c in sim_row["clients"]}
        assert {c["partition_id"]: c["bytes_up"] for c in row["clients"]} == by_partition
        assert sorted(by_partition) == [0, 1, 2]
        assert all(c["message_bytes_up"] > c["bytes_up"] > 0 for c in row["clients"])
    for key in ("bytes_up", "bytes_down", "bytes_total", "final_accuracy"):
        assert deployed[key] == simulated[key], key
    # Flower's serialised messages are reported beside the payload. Under both engines they carry
    # the same content; only metadata differs (random 64-bit run/node ids, varint-coded): tens of bytes
    messages = sum(len(r["clients"]) for r in rows)
    for key in ("message_bytes_up", "message_bytes_down"):
        assert deployed[key] > 0 and abs(deployed[key] - simulated[key]) <= 100 * messages, key


@pytest.mark.slow
def test_deployment_leaves_nothing_running(both_engines):
    leftovers = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                if MARK.encode() in (proc / "environ").read_bytes():
                    leftovers.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()[:120])
            except OSError:
                pass
    assert leftovers == []


@pytest.mark.slow
def test_an_unregistered_supernode_is_refused(tmp_path):
    with launched(tmp_path / "flower.log") as launch:
        certs = make_certificates(tmp_path / "secrets")
        port = start_superlink(launch, certs, authenticate=True)
        member, stranger = make_node_key(tmp_path / "secrets", "member"), make_node_key(tmp_path / "secrets", "x")
        member_id = register_node(launch, member)
        config = {"partition-id": 0, "num-partitions": 1}
        refused = start_supernode(launch, port, certs, stranger, config, max_wait=30)
        admitted = start_supernode(launch, port, certs, member, config)
        assert refused.wait(timeout=120) != 0
        for _ in range(120):
            if node_statuses(launch).get(member_id) == "online":
                break
            subprocess.run(["sleep", "0.5"])
        assert node_statuses(launch) == {member_id: "online"}  # the stranger never got a node id
        assert admitted.poll() is None
    assert "No SuperNode found with the given public key" in (tmp_path / "flower.log").read_text()


@pytest.mark.slow
def test_cli_deploy_local_runs_and_reports_both_sizes(tmp_path):
    fedcomp = str(Path(sys.executable).parent / "fedcomp")
    done = subprocess.run([fedcomp, "deploy-local", "--cold", "--out", str(tmp_path / "run"), "--set", "num_clients=2",
                           "--set", "rounds=1", "--set", "model=mlp"], capture_output=True, text=True, timeout=400,
                          cwd=tmp_path, env={**os.environ, "COLUMNS": "400"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "round   1" in done.stdout and "serialised Flower messages up/down" in done.stdout
    assert "TLS (certificates made for the run) + SuperNode authentication" in done.stdout
    assert "started fresh (cold)" in done.stdout


STOCK_APPS = {"serverapp": "benchmarks.stock_server_app:app", "clientapp": "benchmarks.stock_client_app:app"}
STOCK_BOUND = 2.0  # see the test's docstring


@pytest.mark.slow
def test_a_later_deployed_round_takes_at_most_twice_the_stock_clientapps(tmp_path):
    """fedcomp's deployed round (default settings, warm launcher) against a stock Flower PyTorch ClientApp
    (same model, data and FedAvg, each message a fresh process as Flower runs it), 3 TLS-authenticated
    SuperNodes each, measured one after the other in this test.

    The measured ratio is in benchmarks/results/deploy.md. The bound is 2x, not the 1.2x target:
    two runs measured a minute apart on a shared 2-core CI machine differ from load alone (the
    better of rounds 2 and 3 is taken for each to damp that), and the test must not fail on noise.
    """
    config = resolve({"num_clients": 3, "rounds": 3, "seed": 0})
    seconds = {}
    for name, components in (("fedcomp", None), ("stock", STOCK_APPS)):
        run_deployment(config, tmp_path / name, **({"components": components} if components else {}))
        rows = read_rounds(tmp_path / name)
        assert [r["round"] for r in rows] == [1, 2, 3]
        seconds[name] = min(r["round_seconds"] for r in rows[1:])  # the less disturbed of rounds 2 and 3
    assert seconds["fedcomp"] <= STOCK_BOUND * seconds["stock"], seconds
