"""The deployment's keys: the one exports are signed with, and the ones consumers trust."""

from __future__ import annotations

from serializer.signing.keys import SigningKey, TrustedKeys

from .errors import SigningKeyError
from .settings import Settings


def signing_key(settings: Settings) -> SigningKey | None:
    """The key exports are signed with (``EXPORT_SIGNING_KEY`` or ``EXPORT_SIGNING_KEY_PEM``),
    or None where neither is set.

    Raises:
        SigningKeyError: unreadable, not an elliptic-curve private key, or a wrong password.
    """
    password = settings.signing_key_password.get_secret_value().encode() if settings.signing_key_password else None
    try:
        if settings.signing_key_pem is not None:
            pem = settings.signing_key_pem.get_secret_value().encode()
            return SigningKey.from_pem(pem, password=password, where="EXPORT_SIGNING_KEY_PEM")
        if settings.signing_key is not None:
            return SigningKey.from_file(settings.signing_key, password=password)
    except ValueError as exc:
        raise SigningKeyError(str(exc)) from None
    return None


def trusted_keys(settings: Settings, extra: tuple[str, ...] = ()) -> TrustedKeys | None:
    """The public keys ``EXPORT_TRUSTED_KEYS`` names, and ``extra`` paths (``--key``), or None
    where there are none: then signatures are not checked.

    Raises:
        SigningKeyError: a file that is unreadable or not an elliptic-curve public key.
    """
    paths = (*settings.trusted_keys, *extra)
    if not paths:
        return None
    try:
        return TrustedKeys.from_files(paths)
    except ValueError as exc:
        raise SigningKeyError(str(exc)) from None


def deployment_trust(settings: Settings, key: SigningKey | None) -> TrustedKeys | None:
    """The keys whose exports this deployment trusts: its own signing key's and those
    ``EXPORT_TRUSTED_KEYS`` names (a rotation's old key); None where there are neither.

    Raises:
        SigningKeyError: a trusted key file that cannot be used.
    """
    configured = trusted_keys(settings)
    if key is None:
        return configured
    own = TrustedKeys.from_pems([key.public_pem()])
    return own if configured is None else TrustedKeys({**configured.keys, **own.keys})


def worker_trust(settings: Settings, key: SigningKey | None) -> TrustedKeys | None:
    """What a job trusts when it finds an export at its spec's keys: with a signing key,
    :func:`deployment_trust` (an export it cannot trust is replaced, never skipped); without
    one, nothing is checked (an unsigned worker would only replace unsigned with unsigned).

    Raises:
        SigningKeyError: a trusted key file that cannot be used.
    """
    return deployment_trust(settings, key) if key is not None else None
