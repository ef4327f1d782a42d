"""Flower's Deployment Engine on loopback: one SuperLink and N SuperNodes as separate processes.

`run_deployment` runs the same ServerApp and ClientApp as a simulation, but under
``flower-superlink`` and ``flower-supernode`` processes talking over the network stack:

1. it generates, in the run's private folder, a CA and a server certificate for 127.0.0.1
   (TLS) and one P-384 key pair per SuperNode in OpenSSH format (SuperNode authentication);
2. starts ``flower-superlink --enable-supernode-auth`` with the certificates on a free
   127.0.0.1 port, and registers each SuperNode's public key with the Flower CLI
   (``flwr supernode register KEY.pub fedcomp``);
3. starts N ``flower-supernode`` processes, each with its private key and
   ``--node-config "partition-id=i num-partitions=N"``, waits until all N are online
   (``flwr supernode list``), and submits the app with ``flwr run``;
4. stops every process it started (the shared clean-up of `fedcomp.launch.processes`).

A SuperNode whose key was not registered is refused by the SuperLink. ``tls=False`` runs
the same without certificates and without authentication (Flower allows authentication
only over TLS).

How ClientApps run (`ISOLATION`): Flower 1.42 starts one fresh ``flwr-clientapp`` process for
every message in both of its isolation modes. ``subprocess`` has the SuperNode's own SuperExec
start it; ``process`` has a separate ``flower-superexec --plugin-type clientapp`` beside each
SuperNode do the same (``SubprocessExecutor.launch``: one ``flwr-clientapp --token`` per task),
which adds a process per node and saves nothing. Flower's prestarted "warm" executors serve
only its Kubernetes executor. So a message's cost is what a fresh process pays before its
handler runs. fedcomp keeps that small by importing only what the message needs and by
mapping the node's partition from the on-disk cache (`fedcomp.data.partition_cache`)
instead of rebuilding it, and by default (``warm=True``) removes it: each message's
``flwr-clientapp`` is forked from a launcher that has imported everything and loaded the
data once (`fedcomp.launch.warm`), with the same security and the same replies.
`benchmarks/deploy_bench.py` measures where the time goes.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fedcomp.launch.processes import LaunchError, free_port, tail, wait_for_port
from fedcomp.launch.simulation import APP_COMPONENTS, Launch, run_app
from fedcomp.launch.warm import start_launcher

CONNECTION = "fedcomp"  # the SuperLink connection's name in the run's $FLWR_HOME/config.toml
ISOLATION = "subprocess"  # how SuperLink and SuperNodes run their apps (the module docstring says why)


@dataclass(frozen=True)
class Certificates:
    """PEM files for the SuperLink's TLS: the CA every party trusts, the server's certificate and key."""

    ca: Path
    cert: Path
    key: Path


@dataclass(frozen=True)
class NodeKey:
    """One SuperNode's authentication key pair (OpenSSH format, NIST P-384, as Flower requires)."""

    private: Path
    public: Path


def _write_pem(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    path.chmod(0o600)
    return path


def _certificate(subject: str, issuer: x509.Name, key: ec.EllipticCurvePrivateKey, signer: ec.EllipticCurvePrivateKey,
                 days: int, extensions: list[tuple[x509.ExtensionType, bool]]) -> x509.Certificate:
    """A certificate for ``key`` named ``subject``, signed by ``signer`` as ``issuer``, valid from now for ``days``."""
    start = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5)
    builder = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .issuer_name(issuer).public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(start).not_valid_after(start + datetime.timedelta(days=days)))
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(signer, hashes.SHA384())


def make_certificates(folder: Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost"), days: int = 2
                      ) -> Certificates:
    """A fresh CA and a server certificate it signs, valid for ``hosts`` (IPs and names) for ``days``."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, server_key = ec.generate_private_key(ec.SECP384R1()), ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedcomp local CA")])
    ca_usage = x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                             data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                             encipher_only=False, decipher_only=False)
    ca_cert = _certificate("fedcomp local CA", ca_name, ca_key, ca_key, days,
                           [(x509.BasicConstraints(ca=True, path_length=0), True), (ca_usage, True)])
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    server_cert = _certificate(hosts[0], ca_name, server_key, ca_key, days, [
        (x509.SubjectAlternativeName(names), False), (x509.BasicConstraints(ca=False, path_length=None), True),
        (x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), False)])
    pem = serialization.Encoding.PEM
    return Certificates(
        ca=_write_pem(folder / "ca.crt", ca_cert.public_bytes(pem)),
        cert=_write_pem(folder / "server.pem", server_cert.public_bytes(pem)),
        key=_write_pem(folder / "server.key", server_key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())))


def make_node_key(folder: Path, name: str) -> NodeKey:
    """A SuperNode key pair ``name`` / ``name.pub`` in OpenSSH format."""
    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    private = _write_pem(folder / name, key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()))
    public = folder / f"{name}.pub"
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                     serialization.PublicFormat.OpenSSH) + b"\n")
    return NodeKey(private, public)


def start_superlink(launch: Launch, certificates: Certificates | None, authenticate: bool,
                    timeout: float = 60.0) -> int:
    """Start a Deployment-Engine SuperLink on a free 127.0.0.1 port; write the CLI connection; return the port."""
    if authenticate and certificates is None:
        raise LaunchError("SuperNode authentication needs TLS (Flower refuses it on an insecure SuperLink)")
    port = free_port()
    security = (["--insecure"] if certificates is None else
                ["--ssl-ca-certfile", str(certificates.ca), "--ssl-certfile", str(certificates.cert),
                 "--ssl-keyfile", str(certificates.key)])
    superlink = launch.start("flower-superlink", [
        *security, *(["--enable-supernode-auth"] if authenticate else []), "--isolation", ISOLATION,
        "--host", "127.0.0.1", "--port", str(port), "--disable-runtime-dependency-installation"])
    wait_for_port(port, superlink, timeout, launch.log, "flower-superlink")
    launch.connection(port, "insecure = true" if certificates is None else f'root-certificates = "{certificates.ca}"')
    return port


def flwr_cli(launch: Launch, *args: str, timeout: float = 60.0) -> Any:
    """Run one ``flwr`` CLI command against the run's SuperLink with ``--format json``; its parsed output."""
    done = subprocess.run([str(launch.bin_dir / "flwr"), *args, CONNECTION, "--format", "json"],
                          env=launch.popen["env"], cwd=launch.tmp, capture_output=True, text=True, timeout=timeout)
    start = done.stdout.find("{")
    try:
        result = json.loads(done.stdout[start:]) if start >= 0 else None
    except json.JSONDecodeError:
        result = None
    if done.returncode != 0 or not isinstance(result, dict) or result.get("success") is False:
        raise LaunchError(f"`flwr {' '.join(args)}` failed (exit {done.returncode}): "
                          f"{(done.stdout + done.stderr).strip()[-800:]}")
    return result


def register_node(launch: Launch, key: NodeKey) -> int:
    """Register a SuperNode's public key with the SuperLink through the Flower CLI; the node id it gets."""
    return int(flwr_cli(launch, "supernode", "register", str(key.public))["node-id"])


def node_statuses(launch: Launch) -> dict[int, str]:
    """Every registered SuperNode's status (``registered``, ``online``, ``offline``) by node id."""
    listing = flwr_cli(launch, "supernode", "list")
    return {int(node["node-id"]): str(node["status"]) for node in listing.get("nodes", [])}


def start_supernode(launch: Launch, superlink_port: int, certificates: Certificates | None, key: NodeKey | None,
                    node_config: Mapping[str, Any], max_wait: float | None = None,
                    env: Mapping[str, str] | None = None) -> subprocess.Popen:
    """Start one ``flower-supernode`` connecting to the SuperLink on 127.0.0.1, with its own runtime port
    (and ``env``, a warm launcher's environment, in place of the run's)."""
    config = " ".join(f"{k}={json.dumps(v)}" for k, v in node_config.items())
    args = ["--superlink", f"127.0.0.1:{superlink_port}", "--node-config", config, "--isolation", ISOLATION,
            "--host", "127.0.0.1", "--port", str(free_port())]
    args += ["--insecure"] if certificates is None else ["--root-certificates", str(certificates.ca)]
    if key is not None:
        args += ["--auth-supernode-private-key", str(key.private)]
    if max_wait is not None:
        args += ["--max-wait-time", str(max_wait)]
    return launch.start("flower-supernode", args, **({"env": env} if env is not None else {}))


def wait_until_online(launch: Launch, count: int, nodes: list[subprocess.Popen], timeout: float) -> None:
    """Return once ``count`` SuperNodes are online; raise if one of ``nodes`` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        dead = [p for p in nodes if p.poll() is not None]
        if dead:
            raise LaunchError(f"a SuperNode exited with code {dead[0].returncode}:\n{tail(launch.log)}")
        if sum(status == "online" for status in node_statuses(launch).values()) >= count:
            return
        time.sleep(0.5)
    raise LaunchError(f"SuperNodes not online after {timeout:.0f} s ({node_statuses(launch)}):\n{tail(launch.log)}")


def deployment_mode(tls: bool, warm: bool) -> str:
    """One line saying how `run_deployment` runs: security, and how each message reaches the ClientApp."""
    from fedcomp.data.partition_cache import cache_dir

    cache = cache_dir()
    security = "TLS (certificates made for the run) + SuperNode authentication" if tls else \
        "insecure (no TLS, no SuperNode authentication)"
    start = ("forked from a warm launcher that preloaded the app and its data" if warm else
             "started fresh (cold)")
    return (f"deployment mode: {security}; isolation {ISOLATION}, one ClientApp process per message, {start}; "
            f"partition cache {cache if cache is not None else 'off'}")


def run_deployment(config: Mapping[str, Any], run_dir: Path, on_round: Callable[[dict[str, Any]], None] | None = None,
                   tls: bool = True, startup_timeout: float = 120.0,
                   components: Mapping[str, str] = APP_COMPONENTS, warm: bool = True) -> dict[str, Any]:
    """Run the app on a loopback Deployment Engine with ``num_clients`` SuperNodes; return its summary.

    With ``tls`` (the default) the SuperLink serves TLS with certificates made for this run and
    admits only the SuperNodes whose keys were registered through the Flower CLI. With ``warm``
    (the default) each message's ClientApp process is forked from a preloaded launcher
    (`fedcomp.launch.warm`); without it Flower starts each one fresh.
    """
    num_nodes = int(config["num_clients"])

    def deployment_engine(launch: Launch) -> list[str]:
        secrets = launch.tmp / "secrets"
        certificates = make_certificates(secrets) if tls else None
        port = start_superlink(launch, certificates, authenticate=tls, timeout=startup_timeout)
        keys: list[NodeKey | None] = [make_node_key(secrets, f"node{i}") for i in range(num_nodes)] if tls \
            else [None] * num_nodes
        for key in keys:
            if key is not None:
                register_node(launch, key)
        env = start_launcher(launch, config, components["clientapp"], startup_timeout) if warm else None
        nodes = [start_supernode(launch, port, certificates, key, {"partition-id": i, "num-partitions": num_nodes},
                                 env=env) for i, key in enumerate(keys)]
        wait_until_online(launch, num_nodes, nodes, startup_timeout)
        return []

    return run_app(config, run_dir, deployment_engine, on_round, components)
