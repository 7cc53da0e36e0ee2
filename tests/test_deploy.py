"""The deployment files of docs/deploy.md (issue 18). No cluster, Docker daemon or systemd
runs here, so each file is checked for what it relies on: YAML that PyYAML parses, every
command line and probe accepted by the real argument parsers, names and paths that agree
across files (Service and --connect, Secrets and mounts and --key/--trust, health files),
the compose producer app building a Producer with advertise set from its environment, and
the systemd unit verified by ``systemd-analyze verify`` where it exists."""

from __future__ import annotations

import configparser
import importlib.util
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from freelance_rz.cli import status_parser, worker_parser
from freelance_rz.core.wire import parse_endpoint

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
DOCS = Path(__file__).resolve().parent.parent / "docs" / "deploy.md"


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [d for f in sorted((DEPLOY / "kubernetes").glob("*.yaml")) for d in documents(f) if d["kind"] == kind]


def worker_args(argv: list[str]) -> Any:
    assert argv[0] == "freelance-worker", argv
    return worker_parser().parse_args(argv[1:])


def status_args(argv: list[str]) -> Any:
    assert argv[0] == "freelance-status", argv
    args = status_parser().parse_args(argv[1:])
    assert args.check, argv  # probes use the health check
    return args


def mounts(pod: dict[str, Any], container: dict[str, Any]) -> dict[str, str]:
    """mount path -> Secret name, for the container's Secret volumes."""
    secrets = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    return {m["mountPath"]: secrets[m["name"]] for m in container["volumeMounts"] if m["name"] in secrets}


def secret_files() -> dict[str, set[str]]:
    return {s["metadata"]["name"]: set(s["stringData"]) for s in of_kind("Secret")}


def check_key_path(path: str, mounted: dict[str, str], suffix: str) -> None:
    """``path`` is a file of a mounted Secret, named as key files are (``NAME.key`` or
    ``NAME.key_secret``)."""
    directory, name = path.rsplit("/", 1)
    assert directory in mounted, (path, mounted)
    assert name.endswith(suffix) and name in secret_files()[mounted[directory]], (path, secret_files())


def check_trust_dir(directory: str, mounted: dict[str, str]) -> None:
    assert directory in mounted, (directory, mounted)
    assert any(f.endswith(".key") for f in secret_files()[mounted[directory]])


def test_kubernetes_producers_behind_a_headless_service():
    [service] = of_kind("Service")
    assert service["spec"]["clusterIP"] == "None"  # headless: one A record per pod
    [port] = service["spec"]["ports"]
    [producers] = [d for d in of_kind("Deployment") if d["metadata"]["name"] == "myapp-producer"]
    template = producers["spec"]["template"]
    assert service["spec"]["selector"].items() <= template["metadata"]["labels"].items()
    assert producers["spec"]["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
    [app] = template["spec"]["containers"]
    assert port["targetPort"] in [p["containerPort"] for p in app["ports"]]
    assert {"name": "FREELANCE_PORT", "value": str(port["targetPort"])} in app["env"]
    mounted = mounts(template["spec"], app)
    for probe in ("livenessProbe", "readinessProbe"):
        args = status_args(app[probe]["exec"]["command"])
        assert args.connect == [f"tcp://127.0.0.1:{port['targetPort']}"]
        check_key_path(args.key, mounted, ".key_secret")
        check_trust_dir(args.trust, mounted)
    # the producer's own key pair and its authorized workers, as the comment's Producer(...)
    assert "/etc/freelance/keys" in mounted and "/etc/freelance/authorized" in mounted
    assert "producer.key_secret" in secret_files()[mounted["/etc/freelance/keys"]]
    authorized = secret_files()[mounted["/etc/freelance/authorized"]]
    assert {"worker.key", "probe.key"} <= authorized  # the workers' and the probe's keys


def test_kubernetes_workers_poll_every_producer_pod_and_probe_their_health_file():
    [service] = of_kind("Service")
    [workers] = [d for d in of_kind("Deployment") if d["metadata"]["name"] == "freelance-workers"]
    template = workers["spec"]["template"]
    [container] = template["spec"]["containers"]
    args = worker_args(container["command"])
    [endpoint] = args.connect
    host, port = parse_endpoint(endpoint)
    meta = service["metadata"]
    assert host.split(".")[:3] == [meta["name"], meta["namespace"], "svc"], host  # the Service's name
    assert port == service["spec"]["ports"][0]["port"]
    assert args.health_file
    probe = status_args(container["livenessProbe"]["exec"]["command"])
    assert probe.health_file == args.health_file
    mounted = mounts(template["spec"], container)
    check_key_path(args.key, mounted, ".key_secret")
    check_trust_dir(args.trust, mounted)
    assert "producer.key" in secret_files()[mounted[args.trust]]
    assert template["spec"]["terminationGracePeriodSeconds"] >= 60  # C6: jobs finish first
    for doc in (*of_kind("Deployment"), *of_kind("Secret"), service):
        assert doc["metadata"]["namespace"] == meta["namespace"]


def test_compose_producer_app_and_scaled_workers():
    compose = documents(DEPLOY / "compose" / "compose.yaml")[0]
    producer, worker = compose["services"]["producer"], compose["services"]["worker"]
    env = producer["environment"]
    assert f"{env['FREELANCE_PORT']}:{env['FREELANCE_PORT']}" in producer["ports"]
    assert env["FREELANCE_ADVERTISE"].endswith(f":{env['FREELANCE_PORT']}")
    args = worker_args(worker["command"])
    assert args.connect == [f"tcp://producer:{env['FREELANCE_PORT']}"] and args.group == env["FREELANCE_GROUP"]
    assert worker["deploy"]["replicas"] >= 2
    assert status_args(worker["healthcheck"]["test"][1:]).health_file == args.health_file
    assert status_args(producer["healthcheck"]["test"][1:]).connect == [f"tcp://127.0.0.1:{env['FREELANCE_PORT']}"]
    for service in (producer, worker):
        dockerfile = DEPLOY.parent / service["build"]["dockerfile"]
        assert (DEPLOY / "compose" / service["build"]["context"]).resolve() == DEPLOY.parent
        assert dockerfile.exists()
    copied = [line.split()[1:-1] for line in dockerfile.read_text().splitlines() if line.startswith("COPY ")]
    assert all((DEPLOY.parent / src).exists() for srcs in copied for src in srcs if src != ".")


def test_compose_app_builds_its_producer_from_the_environment(tmp_path):
    spec = importlib.util.spec_from_file_location("compose_app", DEPLOY / "compose" / "app.py")
    assert spec is not None and spec.loader is not None
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    env = documents(DEPLOY / "compose" / "compose.yaml")[0]["services"]["producer"]["environment"]
    env = {k: v.replace("${FREELANCE_HOST:-127.0.0.1}", "198.18.0.7") for k, v in env.items()}
    env["FREELANCE_ENDPOINTS_FILE"] = str(tmp_path / "producers.txt")
    producer = app.producer_from_env(env)
    try:
        assert producer.port == 5555 and producer.advertise == "tcp://198.18.0.7:5555"
        assert producer.group == env["FREELANCE_GROUP"] and producer.announce is False
    finally:
        producer.close()  # never started: nothing was bound


def test_systemd_unit():
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    path = DEPLOY / "systemd" / "freelance-worker.service"
    unit.read(path)
    service = unit["Service"]
    argv = shlex.split(service["ExecStart"].replace("\\\n", " "))
    assert argv[0].endswith("/freelance-worker")
    worker_args(["freelance-worker", *argv[1:]])
    assert service["KillMode"] == "mixed" and int(service["LimitNOFILE"]) >= 4096
    assert worker_args(["freelance-worker", *argv[1:]]).health_file.startswith("/run/freelance-worker/")
    assert service["RuntimeDirectory"] == "freelance-worker"


def test_systemd_unit_verifies(tmp_path):
    """``systemd-analyze verify`` with ExecStart pointing at this freelance-worker."""
    analyze, worker = shutil.which("systemd-analyze"), shutil.which("freelance-worker")
    if analyze is None or worker is None:
        pytest.skip("systemd-analyze or freelance-worker is not installed here")
    text = (DEPLOY / "systemd" / "freelance-worker.service").read_text()
    (tmp_path / "freelance-worker.service").write_text(
        text.replace("/opt/freelance/venv/bin/freelance-worker", worker))
    done = subprocess.run([analyze, "verify", str(tmp_path / "freelance-worker.service")],
                          capture_output=True, text=True, timeout=60)
    problems = [line for line in done.stderr.splitlines() if "freelance-worker.service" in line]
    assert done.returncode == 0 and not problems, done.stderr


def test_the_docs_show_these_files_and_say_no_cluster_ran():
    text = DOCS.read_text()
    for path in sorted(DEPLOY.rglob("*")):
        if path.is_file():
            assert str(path.relative_to(DEPLOY.parent)) in text, path
    assert "no kubernetes cluster" in text.lower()
