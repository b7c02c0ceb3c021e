"""The held configuration and named presets (save, load, import, export)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request

from hypergpu.api.models import Action, Preset
from hypergpu.api.presets import PresetStore, public_config
from hypergpu.api.routes.deps import get_service
from hypergpu.api.routes.training import WRITE, Responses, _action
from hypergpu.api.security import require_writer
from hypergpu.api.service import TrainingService
from hypergpu.config.schema import HyperGPUConfig

router = APIRouter(prefix="/api", tags=["config"])
Service = Annotated[TrainingService, Depends(get_service)]
PresetName = Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="letters, digits, '_', '-'")]
NOT_FOUND: Responses = {404: {"description": "unknown preset"}}


def _store(request: Request) -> PresetStore:
    return request.app.state.presets  # type: ignore[no-any-return]


Store = Annotated[PresetStore, Depends(_store)]


@router.get("/config", response_model=HyperGPUConfig)
def get_config(service: Service) -> HyperGPUConfig:
    """The configuration the next run uses (the API token is never returned)."""
    return public_config(service.config)


@router.put("/config", response_model=HyperGPUConfig, dependencies=[Depends(require_writer)], responses=WRITE)
def put_config(service: Service, config: HyperGPUConfig) -> HyperGPUConfig:
    """Replace the configuration of the next run (a run in progress keeps its own)."""
    # The token that guards this server is fixed at start; a posted one is not adopted.
    service.set_config(config.model_copy(update={"api": config.api.model_copy(update={"token": service.config.api.token})}))
    return public_config(service.config)


@router.get("/presets", response_model=list[Preset])
def list_presets(store: Store) -> list[Preset]:
    return [Preset(name=n, saved_at=t) for n, t in store.names()]


@router.get("/presets/{name}", response_model=HyperGPUConfig, responses=NOT_FOUND)
def export_preset(store: Store, name: PresetName) -> HyperGPUConfig:
    """A preset's configuration as JSON (export)."""
    return public_config(store.load(name))


@router.put("/presets/{name}", response_model=Preset, dependencies=[Depends(require_writer)], responses=WRITE)
def import_preset(store: Store, name: PresetName, config: HyperGPUConfig) -> Preset:
    """Save a configuration under a name (import, or save the form's contents)."""
    return Preset(name=name, saved_at=store.save(name, config))


@router.post("/presets/{name}/save", response_model=Preset, dependencies=[Depends(require_writer)], responses=WRITE)
def save_current(store: Store, service: Service, name: PresetName) -> Preset:
    """Save the held configuration under a name."""
    return Preset(name=name, saved_at=store.save(name, service.config))


@router.post("/presets/{name}/load", response_model=Action, dependencies=[Depends(require_writer)],
             responses={**NOT_FOUND, **WRITE})
def load_preset(store: Store, service: Service, name: PresetName) -> Action:
    """Make a preset the configuration of the next run."""
    config = store.load(name)
    service.set_config(config.model_copy(update={"api": config.api.model_copy(update={"token": service.config.api.token})}))
    return _action(service, f"preset {name!r} loaded for the next run")


@router.delete("/presets/{name}", response_model=Action, dependencies=[Depends(require_writer)],
               responses={**NOT_FOUND, **WRITE})
def delete_preset(store: Store, service: Service, name: PresetName) -> Action:
    store.delete(name)
    return _action(service, f"preset {name!r} deleted")
