"""azure-core's token types as kvassert hands them out: the same types, without the token in repr.

azure-core's ``AccessToken`` (a NamedTuple) and ``AccessTokenInfo`` print the bearer token in
their ``repr``, so ``log.debug("got %r", credential.get_token(scope))`` would write a credential
to the log. These subclasses are still ``AccessToken`` / ``AccessTokenInfo`` for every caller
(isinstance, equality, unpacking, attributes); only their text says ``<redacted>``, as
kvassert's own ``AccessToken`` does. Apart from ``credential`` so that importing it (and
azure-core) waits for the first token.
"""

from __future__ import annotations

from azure.core.credentials import AccessToken, AccessTokenInfo


class RedactedAccessToken(AccessToken):
    """``azure.core.credentials.AccessToken`` whose repr does not show the token."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"AccessToken(token=<redacted>, expires_on={self.expires_on})"


class RedactedAccessTokenInfo(AccessTokenInfo):
    """``azure.core.credentials.AccessTokenInfo`` whose repr does not show the token."""

    def __repr__(self) -> str:
        return (
            f"AccessTokenInfo(token=<redacted>, expires_on={self.expires_on}, "
            f"token_type={self.token_type!r}, refresh_on={self.refresh_on})"
        )
