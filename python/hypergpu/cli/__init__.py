"""The ``hypergpu`` command line."""

from __future__ import annotations

import json

import click

from hypergpu._core import __version__
from hypergpu.cli.common import config_or_exit, fail, set_option
from hypergpu.config import config_schema
from hypergpu.errors import MissingExtraError


class _Commands(click.Group):
    """Every command ends with one clear line when an extra it needs is missing."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except MissingExtraError as exc:
            fail(str(exc))


@click.group(cls=_Commands)
@click.version_option(__version__, prog_name="hypergpu")
def main() -> None:
    """HyperGPU: network-aware distributed PyTorch training."""


@main.group()
def config() -> None:
    """Inspect and validate configuration files."""


@config.command("schema")
def config_schema_cmd() -> None:
    """Print the JSON schema of the configuration."""
    click.echo(json.dumps(config_schema(), indent=2))


@config.command("check")
@click.argument("file", type=click.Path(dir_okay=False))
@set_option
def config_check(file: str, overrides: tuple[str, ...]) -> None:
    """Validate FILE (TOML) with overrides and print the resolved config."""
    click.echo(config_or_exit(file, overrides).model_dump_json(indent=2))


def _register() -> None:
    from hypergpu.cli.chain import chain_group
    from hypergpu.cli.run import coordinator_cmd, demo_cmd, node_cmd, node_key_cmd, train_cmd
    from hypergpu.cli.serve import serve_cmd

    for cmd in (coordinator_cmd, node_cmd, node_key_cmd, train_cmd, demo_cmd, serve_cmd, chain_group):
        main.add_command(cmd)


_register()
