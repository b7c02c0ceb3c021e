"""Loading the coordinator's signing key without ever printing it."""

from __future__ import annotations

import json
import os

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress

from hypergpu.config.chain import ChainConfig
from hypergpu.errors import ConfigError


class Signer:
    """Holds a local account; its repr and str show only the address."""

    __slots__ = ("_account",)

    def __init__(self, account: LocalAccount):
        self._account = account

    @property
    def address(self) -> ChecksumAddress:
        return self._account.address

    def sign_transaction(self, tx: dict) -> bytes:
        return bytes(self._account.sign_transaction(tx).raw_transaction)

    def __repr__(self) -> str:
        return f"Signer(address={self.address})"

    __str__ = __repr__

    def __reduce__(self):  # never let the key travel through pickle
        raise TypeError("Signer cannot be pickled")

    @classmethod
    def from_hex(cls, key: str) -> Signer:
        try:
            return cls(Account.from_key(key.strip()))
        except (ValueError, TypeError) as exc:
            # The message must not echo the key itself.
            raise ConfigError(f"signing key is not a valid secp256k1 private key ({type(exc).__name__})") from None

    @classmethod
    def create(cls) -> Signer:
        """A fresh throwaway key, for local chains that fund it from a dev account."""
        return cls(Account.create())


def load_signer(config: ChainConfig, *, required: bool) -> Signer | None:
    """The key from ``config.key_env``, else from ``config.keystore_path``.

    Returns None when neither is set and ``required`` is false (local chains
    then use a funded throwaway key).
    """
    key = os.environ.get(config.key_env)
    if key:
        return Signer.from_hex(key)
    if config.keystore_path is not None:
        password = os.environ.get(config.keystore_password_env)
        if password is None:
            raise ConfigError(f"keystore {config.keystore_path} needs its password in ${config.keystore_password_env}")
        try:
            with open(config.keystore_path, encoding="utf-8") as fh:
                blob = json.load(fh)
            raw = Account.decrypt(blob, password)
        except FileNotFoundError:
            raise ConfigError(f"keystore file not found: {config.keystore_path}") from None
        except (ValueError, KeyError) as exc:
            raise ConfigError(f"cannot decrypt keystore {config.keystore_path}: {exc}") from None
        return Signer(Account.from_key(raw))
    if required:
        raise ConfigError(
            f"no signing key: set ${config.key_env} to a hex private key, "
            f"or keystore_path plus ${config.keystore_password_env}"
        )
    return None
