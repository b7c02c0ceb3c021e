"""The compiled contract artifacts, and decoding of their custom revert errors."""

from __future__ import annotations

import ast
import json
from functools import cache
from importlib import resources
from typing import Any

from eth_abi import decode as abi_decode
from eth_abi.exceptions import DecodingError
from eth_utils import function_signature_to_4byte_selector

from hypergpu.errors import ChainError, ContractRevertError

CORE_CONTRACTS = ("TrainingRegistry", "ContributionTracker", "RewardDistributor")

# The two ERC-20 calls the client makes on a reward token.
ERC20_ABI: list[dict[str, Any]] = [
    {
        "type": "function",
        "name": "approve",
        "stateMutability": "nonpayable",
        "inputs": [{"name": "spender", "type": "address"}, {"name": "value", "type": "uint256"}],
        "outputs": [{"name": "", "type": "bool"}],
    },
    {
        "type": "function",
        "name": "balanceOf",
        "stateMutability": "view",
        "inputs": [{"name": "account", "type": "address"}],
        "outputs": [{"name": "", "type": "uint256"}],
    },
]


@cache
def load_artifact(name: str) -> dict[str, Any]:
    """ABI and bytecode of one contract, as written by contracts/compile.js."""
    try:
        text = resources.files("hypergpu.chain").joinpath("artifacts", f"{name}.json").read_text("utf-8")
    except FileNotFoundError:
        raise ChainError(f"no compiled artifact for contract {name!r}") from None
    return json.loads(text)


def _all_artifact_names() -> list[str]:
    folder = resources.files("hypergpu.chain").joinpath("artifacts")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".json"))


def _canonical_type(entry: dict[str, Any]) -> str:
    if entry["type"].startswith("tuple"):
        inner = ",".join(_canonical_type(c) for c in entry["components"])
        return f"({inner}){entry['type'][5:]}"
    return entry["type"]


@cache
def _error_table() -> dict[bytes, tuple[str, list[str], list[str]]]:
    table: dict[bytes, tuple[str, list[str], list[str]]] = {}
    for name in _all_artifact_names():
        for item in load_artifact(name)["abi"]:
            if item["type"] != "error":
                continue
            types = [_canonical_type(i) for i in item["inputs"]]
            selector = function_signature_to_4byte_selector(f"{item['name']}({','.join(types)})")
            table[selector] = (item["name"], types, [i["name"] or f"arg{n}" for n, i in enumerate(item["inputs"])])
    return table


_ERROR_STRING = function_signature_to_4byte_selector("Error(string)")


def revert_data(exc: BaseException) -> bytes | None:
    """The raw revert payload carried by a web3 or eth-tester exception, if any."""
    data = getattr(exc, "data", None)
    if isinstance(data, dict):
        data = data.get("data")
    if isinstance(data, str) and data.startswith("0x"):
        try:
            return bytes.fromhex(data[2:])
        except ValueError:
            return None
    if isinstance(data, bytes):
        return data
    # eth-tester reports "execution reverted: b'...'" with the payload's repr.
    message = str(exc.args[0]) if exc.args else ""
    prefix = "execution reverted: "
    if message.startswith(prefix) and message[len(prefix) : len(prefix) + 2] in ("b'", 'b"'):
        try:
            value = ast.literal_eval(message[len(prefix) :])
        except (ValueError, SyntaxError):
            return None
        return value if isinstance(value, bytes) else None
    return None


def decode_revert(exc: BaseException, context: str) -> ContractRevertError:
    """A ContractRevertError naming the custom error (and its arguments) behind ``exc``."""
    data = revert_data(exc)
    if data and len(data) >= 4:
        selector, body = data[:4], data[4:]
        if selector == _ERROR_STRING:
            (reason,) = abi_decode(["string"], body)
            return ContractRevertError(f"{context} reverted: {reason}", "Error", {"reason": reason})
        known = _error_table().get(selector)
        if known is not None:
            name, types, names = known
            try:
                values = abi_decode(types, body)
            except (DecodingError, ValueError):  # a payload that does not match its selector:
                values = ()  # the revert is still reported, by name, without its arguments
            args = {n: (v.hex() if isinstance(v, bytes) else v) for n, v in zip(names, values)}
            shown = ", ".join(f"{k}={v}" for k, v in args.items())
            return ContractRevertError(f"{context} reverted: {name}({shown})", name, args)
        return ContractRevertError(f"{context} reverted with unknown error 0x{data.hex()}")
    message = str(exc.args[0]) if exc.args else type(exc).__name__
    return ContractRevertError(f"{context} reverted: {message}")
