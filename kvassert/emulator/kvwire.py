"""Key Vault's JSON wire shapes: parse request bodies into state-model values, render state into
the bodies the SDK expects. Pure functions, no I/O.

Field names follow the installed SDK's generated models (``azure/keyvault/{keys,certificates}/
_generated/models/_models.py``): ``key_ops``, ``key_size``, ``Hsm``, ``x5t`` (base64url SHA-1),
``cer`` (standard base64 DER), ``key_props``/``secret_props``/``x509_props``/``issuer``/
``lifetime_actions``, ``validity_months``, ``sans``, ``contentType``, attribute times ``nbf``/
``exp``/``created``/``updated`` as integer epoch seconds, ``recoveryLevel``/``recoverableDays``.
Invalid input raises ``BadParameter``.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa

from kvassert.emulator.keystore import RSA_KEY_SIZES
from kvassert.emulator.vault import (
    Attributes,
    BadParameter,
    CertificateOperation,
    CertificatePolicy,
    CertificateVersion,
    KeyVersion,
    LifetimeAction,
    SecretVersion,
)
from kvassert.emulator.x509util import sha1

RECOVERY = {"recoveryLevel": "Recoverable+Purgeable", "recoverableDays": 90}
PENDING_DETAILS = (
    "Pending certificate created. Certificate request is in progress. This may take some time "
    "based on the issuer provider. Please check again later."
)


# ---- primitives ---------------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(value: Any, field: str) -> bytes:
    if not isinstance(value, str):
        raise BadParameter(f"Property '{field}' must be a base64url string.")
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        raise BadParameter(f"Property '{field}' is not valid base64url.") from None


def _int_bytes(value: int) -> bytes:
    return value.to_bytes((value.bit_length() + 7) // 8 or 1, "big")


def parse_body(raw: bytes) -> dict[str, Any]:
    """The JSON object of a request body."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):  # nesting past the recursion limit
        raise BadParameter("The request body is not valid JSON.") from None
    if not isinstance(data, dict):
        raise BadParameter("The request body must be a JSON object.")
    return data


def get(
    data: Mapping[str, Any], field: str, kind: type | tuple[type, ...], default: Any = None
) -> Any:
    """``data[field]`` checked against ``kind`` (bool is never an int here); absent or null
    gives ``default``."""
    value = data.get(field)
    if value is None:
        return default
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        raise BadParameter(f"Property '{field}' has an invalid type.")
    if not isinstance(value, kinds):
        raise BadParameter(f"Property '{field}' has an invalid type.")
    return value


def strings(data: Mapping[str, Any], field: str) -> tuple[str, ...] | None:
    value = get(data, field, list)
    if value is None:
        return None
    if not all(isinstance(v, str) for v in value):
        raise BadParameter(f"Property '{field}' must be a list of strings.")
    return tuple(value)


def tags(data: Mapping[str, Any]) -> dict[str, str] | None:
    value = get(data, "tags", dict)
    if value is None:
        return None
    if len(value) > 15 or not all(isinstance(v, str) for v in value.values()):
        raise BadParameter("Tags must be at most 15 string values.")
    return dict(value)


def attributes(data: Mapping[str, Any]) -> tuple[bool | None, int | None, int | None]:
    """(enabled, nbf, exp) from an ``attributes`` object."""
    attrs = get(data, "attributes", dict, {})
    return get(attrs, "enabled", bool), get(attrs, "nbf", int), get(attrs, "exp", int)


# ---- keys ---------------------------------------------------------------------------------


def jwk_private_key(jwk: Mapping[str, Any]) -> rsa.RSAPrivateKey:
    """The RSA private key of an import's JWK (``n``, ``e``, ``d``; primes recovered if absent)."""

    def number(name: str, required: bool = True) -> int | None:
        if jwk.get(name) is None:
            if required:
                raise BadParameter(f"The key to import must include '{name}' (RSA private key).")
            return None
        return int.from_bytes(b64url_decode(jwk[name], f"key.{name}"), "big")

    n, e, d = number("n"), number("e"), number("d")
    assert n is not None and e is not None and d is not None
    p, q = number("p", False), number("q", False)
    # Sizes first (the service imports RSA 2048-4096 only): recovering the primes from a huge
    # e * d took minutes of CPU per request.
    if n.bit_length() not in RSA_KEY_SIZES:
        raise BadParameter(f"Invalid key size {n.bit_length()}: expected one of {RSA_KEY_SIZES}.")
    if not all(1 < x < n for x in (e, d, *(v for v in (p, q) if v is not None))):
        raise BadParameter("The RSA key to import is not consistent.")
    try:
        if p is None or q is None:
            p, q = rsa.rsa_recover_prime_factors(n, e, d)
        numbers = rsa.RSAPrivateNumbers(
            p, q, d, rsa.rsa_crt_dmp1(d, p), rsa.rsa_crt_dmq1(d, q), rsa.rsa_crt_iqmp(p, q),
            rsa.RSAPublicNumbers(e, n),
        )  # fmt: skip
        return numbers.private_key()
    except (ValueError, ArithmeticError):
        raise BadParameter("The RSA key to import is not consistent.") from None


def _attributes_json(attrs: Attributes, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"enabled": attrs.enabled}
    if attrs.not_before is not None:
        out["nbf"] = attrs.not_before
    if attrs.expires is not None:
        out["exp"] = attrs.expires
    return {**out, "created": attrs.created, "updated": attrs.updated, **RECOVERY, **extra}


def key_id(base: str, name: str, version: str = "") -> str:
    return f"{base}/keys/{name}/{version}" if version else f"{base}/keys/{name}"


def key_bundle(base: str, key: KeyVersion) -> dict[str, Any]:
    numbers = key.private_key.public_key().public_numbers()
    body: dict[str, Any] = {
        "key": {
            "kid": key_id(base, key.name, key.version),
            "kty": key.kty,
            "key_ops": list(key.key_ops),
            "n": b64url(_int_bytes(numbers.n)),
            "e": b64url(_int_bytes(numbers.e)),
        },
        "attributes": _attributes_json(key.attributes, exportable=False),
    }
    if key.tags:
        body["tags"] = dict(key.tags)
    if key.managed:
        body["managed"] = True
    return body


def key_item(base: str, key: KeyVersion, *, versioned: bool) -> dict[str, Any]:
    item: dict[str, Any] = {
        "kid": key_id(base, key.name, key.version if versioned else ""),
        "attributes": _attributes_json(key.attributes, exportable=False),
    }
    if key.tags:
        item["tags"] = dict(key.tags)
    if key.managed:
        item["managed"] = True
    return item


# ---- certificates -------------------------------------------------------------------------


def parse_policy(data: Mapping[str, Any]) -> CertificatePolicy:
    """A policy object (``policy`` of a create or import body); absent parts keep Key Vault's
    defaults."""
    default = CertificatePolicy()
    key_props = get(data, "key_props", dict, {})
    secret_props = get(data, "secret_props", dict, {})
    x509_props = get(data, "x509_props", dict, {})
    sans = get(x509_props, "sans", dict, {})
    issuer = get(data, "issuer", dict, {})
    actions = []
    for action in get(data, "lifetime_actions", list, []):
        if not isinstance(action, dict):
            raise BadParameter("Property 'lifetime_actions' must be a list of objects.")
        trigger = get(action, "trigger", dict, {})
        kind = "days_before_expiry" if "days_before_expiry" in trigger else "lifetime_percentage"
        value = get(trigger, kind, int, 80)
        action_type = get(get(action, "action", dict, {}), "action_type", str, "AutoRenew")
        if action_type not in ("AutoRenew", "EmailContacts"):
            raise BadParameter(f"Invalid lifetime action type {action_type[:30]!r}.")
        actions.append(LifetimeAction(kind, value, action_type))
    return CertificatePolicy(
        subject=get(x509_props, "subject", str, default.subject),
        dns_names=strings(sans, "dns_names") or (),
        emails=strings(sans, "emails") or (),
        upns=strings(sans, "upns") or (),
        uris=strings(sans, "uris") or (),
        ip_addresses=strings(sans, "ipAddresses") or (),
        ekus=_or(strings(x509_props, "ekus"), default.ekus),
        key_usage=_or(strings(x509_props, "key_usage"), default.key_usage),
        validity_months=get(x509_props, "validity_months", int, default.validity_months),
        issuer=get(issuer, "name", str, default.issuer),
        certificate_type=get(issuer, "cty", str),
        certificate_transparency=get(issuer, "cert_transparency", bool),
        exportable=get(key_props, "exportable", bool, default.exportable),
        kty=get(key_props, "kty", str, default.kty),
        key_size=get(key_props, "key_size", int, default.key_size),
        reuse_key=get(key_props, "reuse_key", bool, default.reuse_key),
        content_type=get(secret_props, "contentType", str, default.content_type),
        lifetime_actions=tuple(actions) if "lifetime_actions" in data else default.lifetime_actions,
        enabled=get(get(data, "attributes", dict, {}), "enabled", bool, True),
    )


def _or(value: tuple[str, ...] | None, default: tuple[str, ...]) -> tuple[str, ...]:
    return default if value is None else value


def policy_json(base: str, name: str, policy: CertificatePolicy) -> dict[str, Any]:
    sans = {
        key: list(values)
        for key, values in (
            ("dns_names", policy.dns_names),
            ("emails", policy.emails),
            ("upns", policy.upns),
            ("uris", policy.uris),
            ("ipAddresses", policy.ip_addresses),
        )
        if values
    }
    x509_props: dict[str, Any] = {"subject": policy.subject}
    if sans:
        x509_props["sans"] = sans
    x509_props.update(
        ekus=list(policy.ekus),
        key_usage=list(policy.key_usage),
        validity_months=policy.validity_months,
        basic_constraints={"ca": False},
    )
    issuer: dict[str, Any] = {"name": policy.issuer}
    if policy.certificate_type is not None:
        issuer["cty"] = policy.certificate_type
    if policy.certificate_transparency is not None:
        issuer["cert_transparency"] = policy.certificate_transparency
    return {
        "id": f"{base}/certificates/{name}/policy",
        "key_props": {
            "exportable": policy.exportable,
            "kty": policy.kty,
            "key_size": policy.key_size,
            "reuse_key": policy.reuse_key,
        },
        "secret_props": {"contentType": policy.content_type},
        "x509_props": x509_props,
        "lifetime_actions": [
            {"trigger": {a.trigger: a.value}, "action": {"action_type": a.action}}
            for a in policy.lifetime_actions
        ],
        "issuer": issuer,
        "attributes": {
            "enabled": policy.enabled,
            "created": policy.created or policy.updated,
            "updated": policy.updated,
        },
    }


def certificate_id(base: str, name: str, version: str = "") -> str:
    return f"{base}/certificates/{name}/{version}" if version else f"{base}/certificates/{name}"


def certificate_bundle(
    base: str, cert: CertificateVersion, policy: CertificatePolicy
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": certificate_id(base, cert.name, cert.version),
        "kid": key_id(base, cert.name, cert.key_version),
        "sid": f"{base}/secrets/{cert.name}/{cert.secret_version}",
        "x5t": b64url(sha1(cert.der)),
        "cer": base64.b64encode(cert.der).decode(),
        "attributes": _attributes_json(cert.attributes),
        "policy": policy_json(base, cert.name, policy),
    }
    if cert.tags:
        body["tags"] = dict(cert.tags)
    return body


def certificate_item(base: str, cert: CertificateVersion, *, versioned: bool) -> dict[str, Any]:
    item: dict[str, Any] = {
        "id": certificate_id(base, cert.name, cert.version if versioned else ""),
        "x5t": b64url(sha1(cert.der)),
        "attributes": _attributes_json(cert.attributes),
    }
    if cert.tags:
        item["tags"] = dict(cert.tags)
    return item


def operation_json(base: str, name: str, op: CertificateOperation) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": f"{base}/certificates/{name}/pending",
        "issuer": {"name": op.issuer},
        "csr": base64.b64encode(op.csr).decode(),
        "cancellation_requested": False,
        "status": op.status,
        "request_id": op.request_id,
    }
    if op.status == "completed":
        body["target"] = certificate_id(base, name)
    else:
        body["status_details"] = PENDING_DETAILS
    return body


def secret_bundle(base: str, secret: SecretVersion, value: str) -> dict[str, Any]:
    return {
        "value": value,
        "contentType": secret.content_type,
        "id": f"{base}/secrets/{secret.name}/{secret.version}",
        "attributes": _attributes_json(secret.attributes),
        "kid": key_id(base, secret.name, secret.key_version),
        "managed": True,
    }


def secret_item(base: str, secret: SecretVersion) -> dict[str, Any]:
    return {
        "id": f"{base}/secrets/{secret.name}/{secret.version}",
        "attributes": _attributes_json(secret.attributes),
        "contentType": secret.content_type,
        "managed": True,
    }
