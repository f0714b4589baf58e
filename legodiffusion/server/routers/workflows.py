"""Workflows, operators and the model catalogue: validate, register and list."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from pydantic import BaseModel

from legodiffusion.server.errors import ApiError
from legodiffusion.server.state import ServerState, state
from legodiffusion.workflow.spec import spec_from_json
from legodiffusion.workflow.validate import validate

router = APIRouter()


class WorkflowBody(BaseModel):
    spec: dict


@router.get("/v1/catalog/models")
async def list_models(st: ServerState = Depends(state)):
    return {"models": st.engine.catalog.names()}


@router.get("/v1/operators")
async def list_operators(st: ServerState = Depends(state)):
    return {"operators": [st.engine.registry.get(n).describe() for n in st.engine.registry.names()]}


@router.post("/v1/workflows/validate")
async def validate_workflow(body: WorkflowBody, st: ServerState = Depends(state)):
    validate(spec_from_json(body.spec), st.engine.registry)
    return {"valid": True}


@router.post("/v1/workflows")
async def register_workflow(body: WorkflowBody, st: ServerState = Depends(state)):
    spec = spec_from_json(body.spec)
    try:
        created = st.workflows.register(spec, spec.id)
    except KeyError as exc:
        raise ApiError(400, "unknown_model", str(exc.args[0]), "models") from None
    return {"id": spec.id, "created": created}


@router.get("/v1/workflows")
async def list_workflows(st: ServerState = Depends(state)):
    return {"workflows": sorted(st.engine.workflows)}
