"""The held configuration and named presets (save, load, import, export)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request

from hypergpu.api.models import Action, Preset, SettableFields
from hypergpu.api.presets import PresetStore, public_config
from hypergpu.api.routes.deps import Startup, get_service
from hypergpu.api.routes.training import WRITE, Responses, _action
from hypergpu.api.runtime_config import RUNTIME_SETTABLE, STARTUP_ONLY, check_runtime_change
from hypergpu.api.security import require_writer
from hypergpu.api.service import TrainingService
from hypergpu.config.schema import HyperGPUConfig

router = APIRouter(prefix="/api", tags=["config"])
Service = Annotated[TrainingService, Depends(get_service)]
PresetName = Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="letters, digits, '_', '-'")]
NOT_FOUND: Responses = {404: {"description": "unknown preset"}}
SETTABLE: Responses = {422: {"description": "invalid, or changes a field set at startup only (named)"}}


def _store(request: Request) -> PresetStore:
    return request.app.state.presets  # type: ignore[no-any-return]


Store = Annotated[PresetStore, Depends(_store)]


@router.get("/config", response_model=HyperGPUConfig)
def get_config(service: Service) -> HyperGPUConfig:
    """The configuration the next run uses (the API token is never returned)."""
    return public_config(service.config)


@router.get("/config/settable", response_model=SettableFields)
def settable_fields() -> SettableFields:
    """The fields a configuration sent here may change; every other one stays as the server started."""
    return SettableFields(settable=list(RUNTIME_SETTABLE), startup_only=list(STARTUP_ONLY))


@router.put("/config", response_model=HyperGPUConfig, dependencies=[Depends(require_writer)],
            responses={**SETTABLE, **WRITE})
def put_config(service: Service, startup: Startup, config: HyperGPUConfig) -> HyperGPUConfig:
    """Replace the configuration of the next run (a run in progress keeps its own).

    Only the fields ``GET /api/config/settable`` lists may differ from the startup configuration.
    """
    service.set_config(check_runtime_change(startup, config))
    return public_config(service.config)


@router.get("/presets", response_model=list[Preset])
def list_presets(store: Store) -> list[Preset]:
    return [Preset(name=n, saved_at=t) for n, t in store.names()]


@router.get("/presets/{name}", response_model=HyperGPUConfig, responses=NOT_FOUND)
def export_preset(store: Store, name: PresetName) -> HyperGPUConfig:
    """A preset's configuration as JSON (export)."""
    return public_config(store.load(name))


@router.put("/presets/{name}", response_model=Preset, dependencies=[Depends(require_writer)],
            responses={**SETTABLE, **WRITE})
def import_preset(store: Store, startup: Startup, name: PresetName, config: HyperGPUConfig) -> Preset:
    """Save a configuration under a name (import, or save the form's contents); like
    ``PUT /api/config``, it may differ from the startup configuration only in settable fields."""
    return Preset(name=name, saved_at=store.save(name, check_runtime_change(startup, config)))


@router.post("/presets/{name}/save", response_model=Preset, dependencies=[Depends(require_writer)], responses=WRITE)
def save_current(store: Store, service: Service, name: PresetName) -> Preset:
    """Save the held configuration under a name."""
    return Preset(name=name, saved_at=store.save(name, service.config))


@router.post("/presets/{name}/load", response_model=Action, dependencies=[Depends(require_writer)],
             responses={**NOT_FOUND, **SETTABLE, **WRITE})
def load_preset(store: Store, service: Service, startup: Startup, name: PresetName) -> Action:
    """Make a preset the configuration of the next run (its settable fields: a preset file
    written by hand may hold others, and is refused if they differ from the startup's)."""
    service.set_config(check_runtime_change(startup, store.load(name)))
    return _action(service, f"preset {name!r} loaded for the next run")


@router.delete("/presets/{name}", response_model=Action, dependencies=[Depends(require_writer)],
               responses={**NOT_FOUND, **WRITE})
def delete_preset(store: Store, service: Service, name: PresetName) -> Action:
    store.delete(name)
    return _action(service, f"preset {name!r} deleted")
