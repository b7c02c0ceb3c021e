"""What every configuration section shares: unknown keys refused, assignments validated."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

Port = Annotated[int, Field(ge=0, le=65535, description="0 picks a free port")]
Host = Annotated[str, Field(min_length=1)]
NodeId = Annotated[int, Field(ge=0)]
#: An Ethereum address (a node's key, or where it is paid).
Address = Annotated[str, Field(pattern=r"^0x[0-9a-fA-F]{40}$")]


class Section(BaseModel):
    """A configuration section: a typo'd key is an error, not a silent default."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
