"""Which chain to use and how to talk to it.

The signing key is never part of this model: it is read at run time from the
environment variable named by ``key_env`` or from an encrypted keystore file
whose password comes from ``keystore_password_env``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

ChainKind = Literal["embedded", "anvil", "monad-testnet"]

MONAD_TESTNET_CHAIN_ID = 10143
ANVIL_CHAIN_ID = 31337

_SECRET_FIELD_HINTS = ("private_key", "privatekey", "secret", "mnemonic", "password")


class ChainConfig(BaseModel):
    """Chain settings; every default works on a laptop with nothing started."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: ChainKind = "embedded"
    rpc_url: str | None = Field(default=None, description="JSON-RPC URL; anvil defaults to 127.0.0.1:anvil_port")
    chain_id: int | None = Field(default=None, gt=0, description="expected chain id; checked on connect")
    key_env: str = Field(default="HYPERGPU_CHAIN_KEY", min_length=1, description="env var holding the hex key")
    keystore_path: Path | None = Field(default=None, description="encrypted JSON keystore, used if key_env is unset")
    keystore_password_env: str = Field(default="HYPERGPU_KEYSTORE_PASSWORD", min_length=1)
    gas_margin: float = Field(default=0.15, ge=0.0, le=1.0, description="added to each gas estimate")
    gas_extra: int = Field(default=5_000, ge=0, description="flat gas added after the margin")
    retries: int = Field(default=5, ge=0, le=50, description="RPC retries per call before giving up")
    backoff_s: float = Field(default=0.2, gt=0.0, description="first retry delay; doubles each retry")
    backoff_max_s: float = Field(default=5.0, gt=0.0)
    receipt_timeout_s: float = Field(default=60.0, gt=0.0, description="wait for a receipt before rebroadcasting")
    receipt_poll_s: float = Field(default=0.1, gt=0.0, description="how often a receipt is looked for")
    replace_after: int = Field(
        default=3, ge=0, le=100,
        description="receipt timeouts before a stuck transaction is re-signed at its own nonce with higher fees "
                    "(0: only rebroadcast it)",
    )
    fee_bump: float = Field(default=0.125, ge=0.1, le=2.0, description="fee increase of each replacement (nodes "
                            "refuse a replacement under +10%)")
    max_replacements: int = Field(default=3, ge=0, le=20, description="fee bumps per transaction, at most")
    refused_retry_max_s: float = Field(
        default=30.0, gt=0.0,
        description="longest wait between retries of a write refused for now (pool short, paused, session inactive)",
    )
    rpc_timeout_s: float = Field(default=10.0, gt=0.0)
    queue_path: Path = Field(default=Path("runs/chain-queue.sqlite3"), description="durable settlement queue")
    coalesce_after: int | None = Field(
        default=16, ge=1, description="with more than this many chain writes queued, an epoch's contribution "
        "record and reward posting join the newest unsent ones (one transaction for many epochs, the same "
        "totals; Merkle roots never join); None: one transaction per epoch whatever the backlog",
    )
    anvil_port: int = Field(default=8545, ge=1, le=65535)
    anvil_state_path: Path | None = Field(default=None, description="anvil --state file, survives restarts")
    reward_token: str | None = Field(default=None, description="ERC-20 address; None pays in the native currency")
    registry_address: str | None = None
    tracker_address: str | None = None
    distributor_address: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _refuse_secrets(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in data:
                if key in cls.model_fields:
                    continue  # e.g. keystore_password_env names a variable, it holds no secret
                if any(hint in str(key).lower().replace("-", "_") for hint in _SECRET_FIELD_HINTS):
                    raise ValueError(
                        f"chain config must not contain {key!r}: put the key in the environment "
                        f"variable named by key_env, or in an encrypted keystore (keystore_path)"
                    )
        return data

    @model_validator(mode="after")
    def _check_kind(self) -> ChainConfig:
        if self.kind == "monad-testnet":
            if not self.rpc_url:
                raise ValueError("monad-testnet needs rpc_url")
            if self.chain_id not in (None, MONAD_TESTNET_CHAIN_ID):
                raise ValueError(f"monad-testnet has chain id {MONAD_TESTNET_CHAIN_ID}, not {self.chain_id}")
        return self

    @property
    def effective_rpc_url(self) -> str | None:
        if self.kind == "anvil" and not self.rpc_url:
            return f"http://127.0.0.1:{self.anvil_port}"
        return self.rpc_url

    @property
    def expected_chain_id(self) -> int | None:
        if self.chain_id is not None:
            return self.chain_id
        return {"anvil": ANVIL_CHAIN_ID, "monad-testnet": MONAD_TESTNET_CHAIN_ID}.get(self.kind)

    @property
    def deployment(self) -> dict[str, str] | None:
        addrs = (self.registry_address, self.tracker_address, self.distributor_address)
        if all(addrs):
            return dict(zip(("registry", "tracker", "distributor"), addrs))  # type: ignore[arg-type]
        return None
