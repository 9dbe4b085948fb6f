"""One exception tree for everything kvassert raises.

Every error is a ``KvassertError``; configuration errors are also ``ValueError`` so that code which
validates input generically still catches them. Messages never carry secrets: anything that could
hold one is scrubbed by the raiser, and tests plant canaries to prove it.
"""

from __future__ import annotations


class KvassertError(Exception):
    """Base class of every error kvassert raises on purpose."""


class ConfigError(KvassertError, ValueError):
    """The configuration is wrong: names the path, what was found and what is expected.

    ``path`` is the .NET configuration path (``AzureAd:ClientCredentials:0:KeyVaultUrl``), or a
    file name for file-level problems; ``found`` is a printable description of the offending
    value (never a secret itself); ``expected`` says what would be accepted.
    """

    def __init__(self, path: str, found: str, expected: str) -> None:
        self.path = path
        self.found = found
        self.expected = expected
        super().__init__(f"{path}: found {found}; expected {expected}")


class CredentialUnavailableError(KvassertError):
    """A configured credential cannot be loaded (missing file, vault refused, wrong platform)."""

    def __init__(self, message: str, *, source: str = "") -> None:
        self.source = source
        super().__init__(f"{source}: {message}" if source else message)


class SigningError(KvassertError):
    """Producing a signature failed, locally or in Key Vault."""


class KeyVaultError(SigningError):
    """Key Vault answered an error (or garbage) to a certificate read or a sign.

    ``status`` is the HTTP status (0 when no response arrived), ``code`` Key Vault's error code
    (``Forbidden``, ``KeyNotFound``...), ``inner_code`` its inner code (``ForbiddenByRbac``), and
    ``hint`` a sentence saying what to fix.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int = 0,
        code: str = "",
        inner_code: str = "",
        operation: str = "",
        hint: str = "",
    ) -> None:
        self.status = status
        self.code = code
        self.inner_code = inner_code
        self.operation = operation
        self.hint = hint
        text = message
        if hint:
            text = f"{text} Hint: {hint}"
        super().__init__(text)


class TokenRequestError(KvassertError):
    """The Entra token endpoint refused or failed a token request.

    Carries the AADSTS code (``aadsts``, 0 when none), Entra's ``error`` string, the HTTP
    ``status``, ``correlation_id`` and ``trace_id`` for support tickets, and a ``hint``.
    ``credential_problem`` is true for the codes that mean "this credential is wrong or stale"
    (DESIGN section 2): the caller may reload the credential or fall back to the next one.
    ``server_time`` is the response's ``Date`` (epoch seconds), used to correct clock skew.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int = 0,
        error: str = "",
        aadsts: int = 0,
        correlation_id: str = "",
        trace_id: str = "",
        hint: str = "",
        credential_problem: bool = False,
        retry_after: float | None = None,
        server_time: float | None = None,
    ) -> None:
        self.status = status
        self.error = error
        self.aadsts = aadsts
        self.correlation_id = correlation_id
        self.trace_id = trace_id
        self.hint = hint
        self.credential_problem = credential_problem
        self.retry_after = retry_after
        self.server_time = server_time
        text = message
        if hint:
            text = f"{text} Hint: {hint}"
        ids = ", ".join(
            f"{name}={value}"
            for name, value in (("correlation_id", correlation_id), ("trace_id", trace_id))
            if value
        )
        if ids:
            text = f"{text} ({ids})"
        super().__init__(text)


class AllCredentialsFailedError(KvassertError):
    """No configured credential produced a token; ``failures`` lists (credential, reason)."""

    def __init__(self, failures: list[tuple[str, str]]) -> None:
        self.failures = failures
        lines = "\n".join(f"  - {name}: {reason}" for name, reason in failures)
        super().__init__(f"no configured credential could be used:\n{lines}")
