"""Infrastructure checks for ``infra/``: the Bicep parses, checkov finds nothing, and the security
properties kvassert depends on hold in the parse tree.

No Bicep compiler can be installed here, so the Bicep is checked three ways:

1. every ``.bicep`` file parses with pycep-parser (which understands ``extension`` lines);
2. checkov's Bicep runner scans ``infra/``: no parsing errors, no failed checks, and every
   suppression (``// checkov:skip=CKV_...: why``) carries a written justification;
3. structural assertions walk the pycep parse trees (never the raw text), following values
   across modules: role assignments, certificate policy, app settings, hardening flags.

Each structural check is a function returning a list of problems. The tests assert the real
templates give none, and that a copy of the tree with the guarded property changed gives some,
so a check that can no longer fail is itself caught.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.infra.bicep_tree import (
    ROLE_ASSIGNMENTS,
    ROLE_DEFINITIONS,
    VAULTS,
    Infra,
    Origin,
    dotted,
    function_call,
    get,
    parse_all,
    unwrap,
    walk,
)

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
MAIN = "main.bicep"
KEYVAULT = "modules/keyvault.bicep"
CERTIFICATE = "modules/certificate.bicep"
APPSERVICE = "modules/appservice.bicep"
ROLES = "modules/roles.bicep"
APPREGISTRATION = "modules/appregistration.bicep"

SITES = "Microsoft.Web/sites"
DEPLOYMENT_SCRIPTS = "Microsoft.Resources/deploymentScripts"
PUBLISHING_POLICIES = "Microsoft.Web/sites/basicPublishingCredentialsPolicies"
USER_ASSIGNED_IDENTITIES = "Microsoft.ManagedIdentity/userAssignedIdentities"

SECRETS_USER = "4633458b-17de-408a-b874-0445c86b69e6"
CERTIFICATE_USER = "db79e9a7-68ee-4b58-9aeb-b90e7c24fcba"
CERTIFICATES_OFFICER = "a4417e6f-fecd-4de8-b567-7b0420556985"
CRYPTO_USER = "12338af0-0e69-4776-bea7-57ae8d297424"
KEY_VAULT_READER = "21090545-7ca7-4776-b22c-e363652d74d2"
SIGNER_DATA_ACTIONS = {
    "Microsoft.KeyVault/vaults/certificates/read",
    "Microsoft.KeyVault/vaults/keys/sign/action",
}

WEB_APP_IDENTITY = (APPSERVICE, SITES, "identity.principalId")

INSTALL_HINT = (
    "install the infra test tools: pycep-parser>=0.7 beside pytest, and checkov "
    "(pip install checkov, then pip install --no-deps 'pycep-parser>=0.7' in checkov's "
    "environment: checkov pins pycep-parser 0.5.1, which cannot parse `extension` lines); "
    "checkov is looked up in $KVASSERT_CHECKOV, beside this Python, then on PATH"
)


# --------------------------------------------------------------------------- structural checks


def problems_role_guids(infra: Infra) -> list[str]:
    """Secrets User and Certificate User (both grant secrets/getSecret) appear nowhere, and every
    Key Vault role assignment uses an allowed role."""
    problems = []
    for file, tree in infra.trees.items():
        for node in walk(tree):
            if isinstance(node, str) and (SECRETS_USER in node or CERTIFICATE_USER in node):
                problems.append(f"{file}: references a role that can read secrets: {node!r}")
    allowed = {CERTIFICATES_OFFICER, CRYPTO_USER, KEY_VAULT_READER}
    for file, name, body in infra.vault_role_assignments():
        role = infra.role_definition_guid(file, get(body, "properties.roleDefinitionId"))
        if role is None or not (role in allowed or role.startswith("custom:")):
            problems.append(f"{file}:{name} assigns an unexpected role {role!r}")
    return problems


def problems_principals(infra: Infra) -> list[str]:
    """Every Key Vault role assignment goes to the web app's system identity, except the
    deployment script identity's, which is Certificates Officer and nothing else."""
    problems = []
    script_identities: list[tuple[str, str]] = []
    for file, name, body in infra.vault_role_assignments():
        origins = infra.trace(file, get(body, "properties.principalId"))
        role = infra.role_definition_guid(file, get(body, "properties.roleDefinitionId"))
        if origins == {Origin(*WEB_APP_IDENTITY)}:
            continue
        if len(origins) == 1:
            (origin,) = origins
            if (origin.kind, origin.detail) == (USER_ASSIGNED_IDENTITIES, "properties.principalId"):
                script_identities.append((file, name))
                if role != CERTIFICATES_OFFICER:
                    problems.append(f"{file}:{name}: script identity gets {role!r}")
                continue
        problems.append(f"{file}:{name}: principal is {sorted(map(str, origins))}")
    if len(script_identities) != 1:
        problems.append(f"expected one script-identity assignment, got {script_identities}")
    site = infra.only_body(APPSERVICE, SITES)
    if get(site, "identity.type") != "SystemAssigned":
        problems.append(f"web app identity is {get(site, 'identity.type')!r}")
    return problems


def problems_role_names(infra: Infra) -> list[str]:
    """Role assignment and definition names are deterministic guid(...) of the vault/principal."""
    problems = []
    for file, name, _ in infra.all_resources(ROLE_ASSIGNMENTS):
        body = infra.body(file, name)
        call = function_call(body.get("name"), "guid")
        args = {dotted(v) for v in (call or {}).values()}
        scope = dotted(body.get("scope"))
        principal = str(dotted(get(body, "properties.principalId")))
        # A principal created in the same deployment is only known at run time; its resource
        # ID stands in for it (Bicep needs names computable when the deployment starts).
        principal_keys = {principal, f"{principal.split('.')[0]}.id"}
        if call is None or f"{scope}.id" not in args or not args & principal_keys:
            problems.append(f"{file}:{name}: name is not guid(scope.id, principal, ...)")
    for file, name, _ in infra.all_resources(ROLE_DEFINITIONS):
        if function_call(infra.body(file, name).get("name"), "guid") is None:
            problems.append(f"{file}:{name}: role definition name is not guid(...)")
    return problems


def problems_custom_role(infra: Infra) -> list[str]:
    """The custom role holds exactly certificates/read + keys/sign and no control-plane action."""
    problems = []
    definitions = list(infra.all_resources(ROLE_DEFINITIONS))
    if not definitions:
        problems.append("no custom role definition")
    for file, name, _ in definitions:
        for permission in get(infra.body(file, name), "properties.permissions") or []:
            if set(permission.get("dataActions", [])) != SIGNER_DATA_ACTIONS:
                problems.append(f"{file}:{name}: dataActions {permission.get('dataActions')}")
            if permission.get("actions"):
                problems.append(f"{file}:{name}: control-plane actions {permission['actions']}")
    return problems


def problems_certificate_policy(infra: Infra) -> list[str]:
    """The policy handed to the deployment script: non-exportable RSA key, digitalSignature only,
    self-signed, auto-renewed with a new key."""
    problems = []
    script = infra.only_body(CERTIFICATE, DEPLOYMENT_SCRIPTS)
    env = {e["name"]: e["value"] for e in get(script, "properties.environmentVariables") or []}
    call = function_call(env.get("CERT_POLICY"), "string")
    variable = dotted((call or {}).get("value_to_convert"))
    policy = get(infra.section(CERTIFICATE, "variables").get(str(variable)), "value")
    if not isinstance(policy, dict):
        return [f"CERT_POLICY is not string(<policy variable>): {env.get('CERT_POLICY')!r}"]
    if get(policy, "keyProperties.exportable") is not False:
        problems.append(f"exportable is {get(policy, 'keyProperties.exportable')!r}")
    if get(policy, "keyProperties.reuseKey") is not False:
        problems.append("renewal must create a new key (reuseKey: false)")
    if get(policy, "x509CertificateProperties.keyUsage") != ["digitalSignature"]:
        problems.append(f"keyUsage is {get(policy, 'x509CertificateProperties.keyUsage')!r}")
    if get(policy, "issuerParameters.name") != "Self":
        problems.append(f"issuer is {get(policy, 'issuerParameters.name')!r}")
    actions = [get(a, "action.actionType") for a in get(policy, "lifetimeActions") or []]
    if "AutoRenew" not in actions:
        problems.append(f"lifetime actions are {actions}")
    key_type = dotted(get(policy, "keyProperties.keyType"))
    allowed = infra.param_allowed(CERTIFICATE, str(key_type)) or []
    if not allowed or not set(allowed) <= {"RSA", "RSA-HSM"}:
        problems.append(f"keyType {key_type!r} allows {allowed}")
    if env.get("CERT_NAME") is None or infra.trace(CERTIFICATE, env["CERT_NAME"]) != infra.trace(
        CERTIFICATE, infra.section(CERTIFICATE, "outputs")["name"]["value"]
    ):
        problems.append("the script's CERT_NAME is not the certificate name the module outputs")
    return problems


def problems_script_identity(infra: Infra) -> list[str]:
    """The deployment script runs as the user-assigned identity that got Certificates Officer."""
    script = infra.only_body(CERTIFICATE, DEPLOYMENT_SCRIPTS)
    problems = []
    if get(script, "identity.type") != "UserAssigned":
        problems.append(f"script identity type {get(script, 'identity.type')!r}")
    keys = list(get(script, "identity.userAssignedIdentities") or {})
    identities = infra.resources(CERTIFICATE, USER_ASSIGNED_IDENTITIES)
    if len(keys) != 1 or not any(f"${{{name}.id}}" in keys[0] for name in identities):
        problems.append(f"script identity is {keys}, not one of {list(identities)}")
    return problems


def problems_app_settings(infra: Infra) -> list[str]:
    """The AzureAd__* settings on the site, and where their values come from."""
    site = infra.only_body(APPSERVICE, SITES)
    problems: list[str] = []
    settings: dict[str, Any] = {}
    expr = get(site, "properties.siteConfig.appSettings")
    parts = list((function_call(expr, "concat") or {"arg_1": expr}).values())
    variables = infra.section(APPSERVICE, "variables")
    for part in parts:
        value = get(variables.get(str(dotted(part))), "value") if dotted(part) else part
        if isinstance(value, list):
            settings.update({item["name"]: item["value"] for item in value})
    prefix = "AzureAd__ClientCredentials__0__"
    if settings.get(f"{prefix}SourceType") != "KeyVault":
        problems.append(f"SourceType is {settings.get(f'{prefix}SourceType')!r}")
    expected = {
        f"{prefix}KeyVaultUrl": {Origin(KEYVAULT, VAULTS, "properties.vaultUri")},
        f"{prefix}KeyVaultCertificateName": infra.trace(
            CERTIFICATE,
            {
                e["name"]: e["value"]
                for e in get(infra.only_body(CERTIFICATE, DEPLOYMENT_SCRIPTS), "properties")[
                    "environmentVariables"
                ]
            }.get("CERT_NAME"),
        ),
        "AzureAd__ClientId": {Origin(APPREGISTRATION, "Microsoft.Graph/applications", "appId")},
        "AzureAd__TenantId": {Origin(MAIN, "literal", "tenant().tenantId")},
    }
    for name, origins in expected.items():
        if name not in settings:
            problems.append(f"app setting {name} is missing")
            continue
        found = infra.trace(APPSERVICE, settings[name])
        if found != origins:
            problems.append(f"{name} comes from {sorted(map(str, found))}, not {origins}")
    return problems


def problems_site_hardening(infra: Infra) -> list[str]:
    site = infra.only_body(APPSERVICE, SITES)
    expected: dict[str, Any] = {
        "properties.httpsOnly": True,
        "properties.siteConfig.minTlsVersion": "1.2",
        "properties.siteConfig.scmMinTlsVersion": "1.2",
        "properties.siteConfig.ftpsState": "Disabled",
        "properties.siteConfig.http20Enabled": True,
        "properties.siteConfig.alwaysOn": True,
        "properties.siteConfig.remoteDebuggingEnabled": False,
        "identity.type": "SystemAssigned",
    }
    problems = [
        f"site {path} is {get(site, path)!r}, expected {value!r}"
        for path, value in expected.items()
        if get(site, path) != value
    ]
    runtime = infra.trace(APPSERVICE, get(site, "properties.siteConfig.linuxFxVersion"))
    defaults = {infra.param_default(o.file, o.detail) for o in runtime if o.kind == "param"}
    defaults |= {o.detail for o in runtime if o.kind == "literal"}
    if defaults != {"PYTHON|3.12"}:
        problems.append(f"linuxFxVersion defaults to {defaults}")
    command = infra.trace(APPSERVICE, get(site, "properties.siteConfig.appCommandLine"))
    if not all(
        o.kind == "param" and str(infra.param_default(o.file, o.detail)).startswith("gunicorn ")
        for o in command
    ):
        problems.append(f"appCommandLine is not a gunicorn command: {command}")
    policies = {
        get(infra.body(APPSERVICE, n), "name"): get(infra.body(APPSERVICE, n), "properties.allow")
        for n in infra.resources(APPSERVICE, PUBLISHING_POLICIES)
    }
    if policies != {"ftp": False, "scm": False}:
        problems.append(f"basic publishing credentials policies are {policies}")
    return problems


def problems_vault_hardening(infra: Infra) -> list[str]:
    vault = infra.only_body(KEYVAULT, VAULTS)
    problems = [
        f"vault {flag} is {get(vault, 'properties.' + flag)!r}"
        for flag in ("enableRbacAuthorization", "enablePurgeProtection", "enableSoftDelete")
        if get(vault, "properties." + flag) is not True
    ]
    if get(vault, "properties.accessPolicies"):
        problems.append("vault declares access policies (RBAC mode only)")
    firewall = {
        "defaultAction": ("Deny", {"Allow", "Deny"}),
        "bypass": ("AzureServices", {"AzureServices", "None"}),
    }
    for key, (default, allowed) in firewall.items():
        param = dotted(get(vault, f"properties.networkAcls.{key}"))
        if param not in infra.section(KEYVAULT, "parameters"):
            problems.append(f"networkAcls.{key} is not a parameter")
            continue
        if infra.param_default(KEYVAULT, param) != default:
            problems.append(f"networkAcls.{key} defaults to {infra.param_default(KEYVAULT, param)}")
        if set(infra.param_allowed(KEYVAULT, param) or []) != allowed:
            problems.append(f"networkAcls.{key} allows {infra.param_allowed(KEYVAULT, param)}")
    for key in ("ipRules", "virtualNetworkRules"):
        if not isinstance(get(vault, f"properties.networkAcls.{key}"), dict):
            problems.append(f"networkAcls.{key} is not built from a parameter")
    sku = dotted(get(vault, "properties.sku.name"))
    if set(infra.param_allowed(KEYVAULT, str(sku)) or []) != {"standard", "premium"}:
        problems.append(f"sku parameter {sku!r} does not offer standard and premium")
    # The deployment that stays (the one after the certificate script) uses main's firewall param.
    finals = [
        m
        for _, m in infra.callers(KEYVAULT)
        if "dependsOn" in unwrap(infra.section(MAIN, "modules")[m]["config"])
    ]
    for module in finals:
        action = infra.trace(MAIN, infra.module_params(MAIN, module).get("networkDefaultAction"))
        if {infra.param_default(o.file, o.detail) for o in action if o.kind == "param"} != {"Deny"}:
            problems.append(f"final vault deployment {module} default action is {action}")
    if len(finals) != 1:
        problems.append(f"expected one final vault deployment, found {finals}")
    return problems


def problems_app_registration(infra: Infra) -> list[str]:
    problems = []
    if "microsoftGraphV1" not in infra.section(APPREGISTRATION, "extensions"):
        problems.append("appregistration.bicep does not declare `extension microsoftGraphV1`")
    apps = infra.resources(APPREGISTRATION, "Microsoft.Graph/applications")
    sps = infra.resources(APPREGISTRATION, "Microsoft.Graph/servicePrincipals")
    if len(apps) != 1 or len(sps) != 1:
        return [*problems, f"expected one application and one service principal: {apps} {sps}"]
    (app_name, app), (sp_name, _) = next(iter(apps.items())), next(iter(sps.items()))
    if app["api_version"] != "v1.0":
        problems.append(f"application api version {app['api_version']}")
    body = infra.body(APPREGISTRATION, app_name)
    if "uniqueName" not in body:
        problems.append("application has no uniqueName")
    if body.get("passwordCredentials"):
        problems.append("application has password credentials")
    if dotted(infra.body(APPREGISTRATION, sp_name).get("appId")) != f"{app_name}.appId":
        problems.append("service principal is not for the application")
    credentials = body.get("keyCredentials")
    parts = list((function_call(credentials, "concat") or {"arg_1": credentials}).values())
    variables = infra.section(APPREGISTRATION, "variables")
    from_vault = False
    for part in parts:
        item = unwrap(get(variables.get(str(dotted(part))), "value"))
        if not isinstance(item, dict):
            problems.append(f"keyCredentials part {part!r} is not a list of credentials")
            continue
        if item.get("type") != "AsymmetricX509Cert" or item.get("usage") != "Verify":
            kind = f"{item.get('type')}/{item.get('usage')}"
            problems.append(f"key credential {part}: type/usage {kind}")
        key = str(dotted(item.get("key")))
        loop = get(variables[str(dotted(part))], "value.loop_type.detail")
        if loop and key == f"{loop['item_name']}.cer":
            origins = infra.trace(APPREGISTRATION, loop["array_name"])
            from_vault |= origins == {
                Origin(CERTIFICATE, DEPLOYMENT_SCRIPTS, "properties.outputs.validCertificates")
            }
    if not from_vault:
        problems.append("no key credential is the public certificate from the deployment script")
    return problems


CHECKS: dict[str, Callable[[Infra], list[str]]] = {
    "role guids": problems_role_guids,
    "principals": problems_principals,
    "role names": problems_role_names,
    "custom role": problems_custom_role,
    "certificate policy": problems_certificate_policy,
    "script identity": problems_script_identity,
    "app settings": problems_app_settings,
    "site hardening": problems_site_hardening,
    "vault hardening": problems_vault_hardening,
    "app registration": problems_app_registration,
}


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def infra() -> Infra:
    try:
        import pycep  # noqa: F401
    except ImportError:
        pytest.fail(f"pycep-parser is not installed: {INSTALL_HINT}")
    return parse_all(INFRA)


def checkov_executable() -> str | None:
    """``KVASSERT_CHECKOV``, else checkov beside this interpreter (``.venv/bin``), else PATH."""
    if os.environ.get("KVASSERT_CHECKOV"):
        return os.environ["KVASSERT_CHECKOV"]
    beside = Path(sys.executable).parent / "checkov"
    if beside.exists():
        return str(beside)
    return shutil.which("checkov")


@pytest.fixture(scope="session")
def checkov_report() -> dict[str, Any]:
    executable = checkov_executable()
    if executable is not None and not (Path(executable).is_file() or shutil.which(executable)):
        pytest.fail(f"checkov not found at {executable!r}: {INSTALL_HINT}")
    if executable is None:
        if os.environ.get("KVASSERT_SKIP_CHECKOV") == "1":
            pytest.skip("checkov not installed and KVASSERT_SKIP_CHECKOV=1")
        pytest.fail(f"checkov is not installed: {INSTALL_HINT}")
    # Not --quiet: the JSON then also lists passed and skipped checks (with their comments).
    command = [executable, "-d", str(INFRA), "--framework", "bicep", "--skip-download"]
    completed = subprocess.run(
        [*command, "-o", "json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "LOG_LEVEL": "WARNING"},
    )
    try:
        report = json.loads(completed.stdout)
    except json.JSONDecodeError:
        pytest.fail(
            f"checkov did not produce JSON (exit {completed.returncode}): "
            f"{completed.stderr[-3000:] or completed.stdout[-3000:]}"
        )
    if isinstance(report, list):  # one report per framework; only bicep was asked for
        report = next(r for r in report if r.get("check_type") == "bicep")
    if "results" not in report:  # nothing scanned: checkov prints only the summary
        report = {"summary": report, "results": {}}
    assert isinstance(report, dict)
    return report


# --------------------------------------------------------------------------- tests: parsing


BICEP_FILES = sorted(p.relative_to(INFRA).as_posix() for p in INFRA.rglob("*.bicep"))


def test_the_expected_modules_exist() -> None:
    assert set(BICEP_FILES) >= {MAIN, KEYVAULT, CERTIFICATE, APPSERVICE, ROLES, APPREGISTRATION}


@pytest.mark.parametrize("file", BICEP_FILES)
def test_bicep_file_parses(infra: Infra, file: str) -> None:
    tree = infra.trees[file]
    assert tree.get("resources") or tree.get("modules"), f"{file} declares nothing"


def test_bicepconfig_enables_the_graph_extension(infra: Infra) -> None:
    import json5

    config = json5.loads((INFRA / "bicepconfig.json").read_text(encoding="utf-8"))
    reference = config["extensions"]["microsoftGraphV1"]
    assert reference.startswith("br:mcr.microsoft.com/bicep/extensions/microsoftgraph/v1.0:")
    rules = config["analyzers"]["core"]["rules"]
    assert rules["no-hardcoded-env-urls"]["level"] == "error"
    assert rules["outputs-should-not-contain-secrets"]["level"] == "error"
    used = {name for tree in infra.trees.values() for name in tree.get("extensions") or {}}
    assert used <= set(config["extensions"]), f"extensions without an alias: {used}"


def test_bicepparam_sets_only_declared_parameters(infra: Infra) -> None:
    # .bicepparam is not Bicep and pycep cannot parse it: a line-level read is all there is.
    text = (INFRA / "main.bicepparam").read_text(encoding="utf-8")
    assert re.search(r"^using\s+'\./main\.bicep'", text, re.MULTILINE)
    assigned = set(re.findall(r"^param\s+(\w+)\s*=", text, re.MULTILINE))
    declared = set(infra.section(MAIN, "parameters"))
    assert assigned, "main.bicepparam sets no parameter"
    assert assigned <= declared, f"unknown parameters: {sorted(assigned - declared)}"


def test_every_parameter_is_used(infra: Infra) -> None:
    for file, tree in infra.trees.items():
        used: set[str] = set()
        for section in ("variables", "resources", "modules", "outputs"):
            for node in walk(tree.get(section) or {}):
                if isinstance(node, str):
                    used |= set(re.findall(r"[A-Za-z_]\w*", node))
        for param in tree.get("parameters") or {}:
            defaults = walk([p.get("default") for p in tree["parameters"].values()])
            in_defaults = any(isinstance(n, str) and param in n for n in defaults)
            assert param in used or in_defaults, f"{file}: parameter {param} is unused"


def test_module_calls_match_module_parameters(infra: Infra) -> None:
    """What the Bicep type checker would say about module calls: every argument names a declared
    parameter, every parameter without a default gets one, and a parameter passed straight
    through may not allow more values than the module's @allowed list."""
    for file in infra.trees:
        for module in infra.section(file, "modules"):
            target = infra.module_file(file, module)
            declared = infra.section(target, "parameters")
            passed = infra.module_params(file, module)
            assert set(passed) <= set(declared), f"{file}:{module}: {set(passed) - set(declared)}"
            required = {n for n, p in declared.items() if p.get("default") is None}
            assert required <= set(passed), f"{file}:{module} misses {required - set(passed)}"
            for name, value in passed.items():
                allowed = infra.param_allowed(target, name)
                source = dotted(value)
                if allowed is None or source not in infra.section(file, "parameters"):
                    continue
                outer = infra.param_allowed(file, str(source))
                assert outer is not None, f"{file}: {source} needs @allowed like {target}:{name}"
                assert set(outer) <= set(allowed), f"{file}: {source} allows {outer} > {allowed}"


def test_certificate_script_never_touches_secrets(infra: Infra) -> None:
    script = infra.only_body(CERTIFICATE, DEPLOYMENT_SCRIPTS)
    call = function_call(get(script, "properties.scriptContent"), "load_text_content")
    assert call is not None, "scriptContent should be loadTextContent('scripts/...')"
    path = INFRA / Path(CERTIFICATE).parent / call["file_path"]
    lines = [
        line
        for line in path.read_text(encoding="utf-8").splitlines()
        if not line.lstrip().startswith("#")
    ]
    commands = [line for line in lines if re.search(r"\baz\s+keyvault\b", line)]
    assert commands, "the script should call az keyvault"
    for line in lines:
        assert not re.search(r"\bsecret\b|getSecret|\bdownload\b", line, re.IGNORECASE), line


# --------------------------------------------------------------------------- tests: checkov


def test_checkov_parses_every_file(checkov_report: dict[str, Any]) -> None:
    summary = checkov_report["summary"]
    errors = checkov_report["results"].get("parsing_errors") or []
    assert summary["parsing_errors"] == 0, f"checkov could not parse {errors}. {INSTALL_HINT}"


def test_checkov_scanned_key_vault_and_app_service(checkov_report: dict[str, Any]) -> None:
    results = checkov_report["results"]
    scanned = {
        check["resource"].rsplit(".", 1)[0]
        for kind in ("passed_checks", "failed_checks", "skipped_checks")
        for check in results.get(kind) or []
    }
    assert {VAULTS, SITES, "Microsoft.Web/serverfarms"} <= scanned, scanned


def test_checkov_finds_no_failed_check(checkov_report: dict[str, Any]) -> None:
    failed = [
        f"{c['check_id']} {c['resource']} ({c['file_path']}): {c['check_name']}"
        for c in checkov_report["results"].get("failed_checks") or []
    ]
    assert failed == [], "\n".join(failed)


def justification_problem(comment: str | None) -> str | None:
    words = re.findall(r"[A-Za-z]{2,}", comment or "")
    if comment is None or comment.strip() == "No comment provided" or len(words) < 4:
        return f"too short: {comment!r}"
    return None


def test_every_checkov_suppression_is_justified(
    infra: Infra, checkov_report: dict[str, Any]
) -> None:
    skipped = checkov_report["results"].get("skipped_checks") or []
    for check in skipped:
        problem = justification_problem(check["check_result"].get("suppress_comment"))
        assert problem is None, f"{check['check_id']} on {check['resource']}: {problem}"
    # Every suppression written in the Bicep must have a justification and must still suppress
    # a check checkov runs (a stale skip hides nothing and only misleads).
    applied = {(c["file_path"].lstrip("/"), c["check_id"]) for c in skipped}
    pattern = re.compile(r"//\s*checkov:skip=([A-Z0-9_,]+)(?::(.*))?$")
    for file in infra.trees:
        for number, line in enumerate((INFRA / file).read_text().splitlines(), start=1):
            match = pattern.search(line)
            if match is None:
                continue
            assert justification_problem(match.group(2)) is None, f"{file}:{number}: {line}"
            for check_id in match.group(1).split(","):
                assert (file, check_id) in applied, f"{file}:{number}: {check_id} skips nothing"


# --------------------------------------------------------------------------- tests: structure


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_structure(infra: Infra, name: str) -> None:
    assert CHECKS[name](infra) == []


def _vault(i: Infra) -> dict[str, Any]:
    return i.only_body(KEYVAULT, VAULTS)["properties"]


def _site(i: Infra) -> dict[str, Any]:
    return i.only_body(APPSERVICE, SITES)


def _policy(i: Infra) -> dict[str, Any]:
    value = i.section(CERTIFICATE, "variables")["certificatePolicy"]["value"]
    assert isinstance(value, dict)
    return value


def _roles_assignment(i: Infra, role_variable: str) -> dict[str, Any]:
    for file, _name, body in i.vault_role_assignments():
        call = function_call(get(body, "properties.roleDefinitionId"), "subscription_resource_id")
        if file == ROLES and call and call.get("resource_name_1") == role_variable:
            return body
    raise AssertionError(f"no assignment of {role_variable}")


def _drop_app_setting(i: Infra, name: str) -> None:
    for variable in i.section(APPSERVICE, "variables").values():
        if isinstance(variable["value"], list):
            variable["value"] = [item for item in variable["value"] if item["name"] != name]


def _set(node: dict[str, Any], key: str, value: Any) -> None:
    node[key] = value


def _set_app_setting(i: Infra, name: str, value: Any) -> None:
    for variable in i.section(APPSERVICE, "variables").values():
        for item in variable["value"] if isinstance(variable["value"], list) else []:
            if item["name"] == name:
                item["value"] = value


def _script_env(i: Infra) -> list[dict[str, Any]]:
    env = i.only_body(CERTIFICATE, DEPLOYMENT_SCRIPTS)["properties"]["environmentVariables"]
    assert isinstance(env, list)
    return env


def _script_role(i: Infra) -> dict[str, Any]:
    (name,) = i.resources(CERTIFICATE, ROLE_ASSIGNMENTS)
    return i.body(CERTIFICATE, name)["properties"]


def _custom_role(i: Infra) -> dict[str, Any]:
    (name,) = i.resources(ROLES, ROLE_DEFINITIONS)
    permissions = i.body(ROLES, name)["properties"]["permissions"][0]
    assert isinstance(permissions, dict)
    return permissions


def _sub_role_id(guid: str) -> dict[str, Any]:
    return {
        "function": {
            "type": "subscription_resource_id",
            "parameters": {
                "resource_type": ROLE_DEFINITIONS,
                "resource_name_1": guid,
                "resource_name_2": None,
                "subscription_id": None,
            },
        }
    }


def _main_param_of(i: Infra, module_file: str, param: str) -> dict[str, Any]:
    for file, module in i.callers(module_file):
        params = i.module_params(file, module)
        if param in params:
            return params
    raise AssertionError(f"no caller of {module_file} sets {param}")


# Each entry changes one guarded property in a copy of the parse trees; the named check must
# then report a problem. This keeps every check honest: none of them can pass vacuously.
MUTATIONS: dict[str, tuple[str, Callable[[Infra], None]]] = {
    "vault without RBAC": (
        "vault hardening",
        lambda i: _set(_vault(i), "enableRbacAuthorization", False),
    ),
    "vault without purge protection": (
        "vault hardening",
        lambda i: _set(_vault(i), "enablePurgeProtection", False),
    ),
    "vault without soft delete": (
        "vault hardening",
        lambda i: _set(_vault(i), "enableSoftDelete", False),
    ),
    "vault firewall hard-coded open": (
        "vault hardening",
        lambda i: _set(_vault(i)["networkAcls"], "defaultAction", "Allow"),
    ),
    "vault firewall defaults to Allow": (
        "vault hardening",
        lambda i: _set(
            i.section(KEYVAULT, "parameters")["networkDefaultAction"], "default", "Allow"
        ),
    ),
    "vault with access policies": (
        "vault hardening",
        lambda i: _set(_vault(i), "accessPolicies", [{"objectId": "x"}]),
    ),
    "exportable key": (
        "certificate policy",
        lambda i: _set(_policy(i)["keyProperties"], "exportable", True),
    ),
    "exportable removed": (
        "certificate policy",
        lambda i: _policy(i)["keyProperties"].pop("exportable"),
    ),
    "key usage widened": (
        "certificate policy",
        lambda i: _set(
            _policy(i)["x509CertificateProperties"],
            "keyUsage",
            ["digitalSignature", "keyEncipherment"],
        ),
    ),
    "no auto-renew": (
        "certificate policy",
        lambda i: _set(_policy(i), "lifetimeActions", []),
    ),
    "script creates another certificate": (
        "certificate policy",
        lambda i: _set(
            next(e for e in _script_env(i) if e["name"] == "CERT_NAME"), "value", "other"
        ),
    ),
    "Secrets User granted": (
        "role guids",
        lambda i: _set(
            _roles_assignment(i, "cryptoUserRoleId")["properties"],
            "roleDefinitionId",
            _sub_role_id(SECRETS_USER),
        ),
    ),
    "Certificate User in a variable": (
        "role guids",
        lambda i: _set(
            i.section(ROLES, "variables")["keyVaultReaderRoleId"], "value", CERTIFICATE_USER
        ),
    ),
    "Contributor-like role granted": (
        "role guids",
        lambda i: _set(
            _roles_assignment(i, "keyVaultReaderRoleId")["properties"],
            "roleDefinitionId",
            _sub_role_id("b24988ac-6180-42a0-ab88-20f7382dd24c"),
        ),
    ),
    "web app role goes to another principal": (
        "principals",
        lambda i: _set(_main_param_of(i, ROLES, "principalId"), "principalId", "someoneElse"),
    ),
    "web app identity user-assigned": (
        "principals",
        lambda i: _set(_site(i)["identity"], "type", "UserAssigned"),
    ),
    "script identity gets Crypto User": (
        "principals",
        lambda i: _set(_script_role(i), "roleDefinitionId", _sub_role_id(CRYPTO_USER)),
    ),
    "role assignment name not deterministic": (
        "role names",
        lambda i: _set(_roles_assignment(i, "cryptoUserRoleId"), "name", "fixed-name"),
    ),
    "custom role can read secrets": (
        "custom role",
        lambda i: _custom_role(i)["dataActions"].append(
            "Microsoft.KeyVault/vaults/secrets/getSecret/action"
        ),
    ),
    "custom role gets control-plane actions": (
        "custom role",
        lambda i: _set(_custom_role(i), "actions", ["Microsoft.KeyVault/vaults/write"]),
    ),
    "script runs without the scoped identity": (
        "script identity",
        lambda i: _set(
            i.only_body(CERTIFICATE, DEPLOYMENT_SCRIPTS)["identity"], "type", "SystemAssigned"
        ),
    ),
    "KeyVaultUrl setting missing": (
        "app settings",
        lambda i: _drop_app_setting(i, "AzureAd__ClientCredentials__0__KeyVaultUrl"),
    ),
    "KeyVaultUrl from a literal": (
        "app settings",
        lambda i: _set(
            _main_param_of(i, APPSERVICE, "keyVaultUri"),
            "keyVaultUri",
            "https://elsewhere.vault.azure.net/",
        ),
    ),
    "certificate name not the created one": (
        "app settings",
        lambda i: _set(_main_param_of(i, APPSERVICE, "certificateName"), "certificateName", "x"),
    ),
    "source type not KeyVault": (
        "app settings",
        lambda i: _set_app_setting(i, "AzureAd__ClientCredentials__0__SourceType", "Path"),
    ),
    "https not enforced": (
        "site hardening",
        lambda i: _set(_site(i)["properties"], "httpsOnly", False),
    ),
    "TLS 1.0 allowed": (
        "site hardening",
        lambda i: _set(_site(i)["properties"]["siteConfig"], "minTlsVersion", "1.0"),
    ),
    "FTP allowed": (
        "site hardening",
        lambda i: _set(_site(i)["properties"]["siteConfig"], "ftpsState", "AllAllowed"),
    ),
    "SCM basic auth allowed": (
        "site hardening",
        lambda i: next(
            _set(i.body(APPSERVICE, n)["properties"], "allow", True)
            for n in i.resources(APPSERVICE, PUBLISHING_POLICIES)
            if i.body(APPSERVICE, n)["name"] == "scm"
        ),
    ),
    "key credential usage Sign": (
        "app registration",
        lambda i: _set(
            i.section(APPREGISTRATION, "variables")["vaultKeyCredentials"]["value"]["config"],
            "usage",
            "Sign",
        ),
    ),
    "graph extension dropped": (
        "app registration",
        lambda i: i.trees[APPREGISTRATION].pop("extensions"),
    ),
}


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_structure_check_catches(infra: Infra, mutation: str) -> None:
    check, mutate = MUTATIONS[mutation]
    broken = infra.copy()
    mutate(broken)
    assert CHECKS[check](broken), f"the {check!r} check did not notice: {mutation}"
