"""``hypergpu chain up``: a local anvil with the contracts deployed."""

from __future__ import annotations

from hypergpu.chain.anvil import AnvilProcess
from hypergpu.chain.client import ChainClient
from hypergpu.config.chain import ChainConfig
from hypergpu.chain.types import Deployment
from hypergpu.errors import ConfigError


def chain_up(config: ChainConfig) -> tuple[AnvilProcess, ChainClient, Deployment]:
    """Starts anvil on 127.0.0.1:``anvil_port`` and deploys the contracts.

    The caller owns the returned process (``stop()`` it, or use it as a
    context manager). With ``anvil_state_path`` set and contract addresses in
    the config, a restarted chain reuses the earlier deployment.
    """
    if config.kind != "anvil":
        raise ConfigError(f"chain up starts a local anvil; config kind is {config.kind!r}")
    anvil = AnvilProcess(config.anvil_port, config.anvil_state_path, config.expected_chain_id or 31337).start()
    try:
        client = ChainClient.connect(config)
        deployment = client.deployment or client.deploy(token=config.reward_token)
    except BaseException:
        anvil.stop()
        raise
    return anvil, client, deployment
