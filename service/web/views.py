"""The API's JSON views of the storage's rows: what a reply says, built here, not in the
storage. Each view names its keys in the order the API has always sent them, and
web/openapi.py describes them (the schemathesis test holds the two together)."""

from __future__ import annotations

from typing import Any

from service.generation.pipeline import Pipeline
from service.storage.interface import (
    DocumentHit,
    DocumentRow,
    FileInfo,
    FileRow,
    GenerationRow,
    MessageRow,
    PersonaRow,
    ProjectRow,
    SceneRow,
)


def project(row: ProjectRow) -> dict[str, Any]:
    active = row.active_generation
    return {
        "id": row.id,
        "name": row.name,
        "created_at": row.created_at,
        "status": "generating" if active is not None else "idle",
        "active_generation": generation(active) if active is not None else None,
        "last_event_id": row.last_event_id,
        "pipeline": row.pipeline,
    }


def generation(row: GenerationRow) -> dict[str, Any]:
    error = None
    if row.error_code is not None:
        error = {
            "code": row.error_code,
            "message": row.error_message,
            "retryable": bool(row.retryable),
        }
    return {
        "id": row.id,
        "project_id": row.project_id,
        "client_request_id": row.client_request_id,
        "prompt": row.prompt,
        "image_urls": list(row.image_urls),
        "status": row.status,
        "stage": row.stage,
        "progress": row.progress,
        "error": error,
        "usage": row.usage,
        "timings": row.timings,
        "provider": row.provider,
        "model": row.model,
        "user_message_id": row.user_message_id,
        "assistant_message_id": row.assistant_message_id,
        "first_event_id": row.first_event_id,
        "created_at": row.created_at,
        "started_at": row.started_at,
        "finished_at": row.finished_at,
        "pipeline": row.pipeline,
        "inputs": row.inputs,
    }


def message(row: MessageRow) -> dict[str, Any]:
    """A message; its message.created event carries the same object (the whole row)."""
    return {
        "id": row.id,
        "project_id": row.project_id,
        "generation_id": row.generation_id,
        "role": row.role,
        "status": row.status,
        "content": row.content,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
    }


def file_info(row: FileInfo) -> dict[str, Any]:
    """A file in a project's listing: no content."""
    return {
        "path": row.path,
        "size": row.size,
        "sha256": row.sha256,
        "generation_id": row.generation_id,
        "updated_at": row.updated_at,
    }


def file(row: FileRow) -> dict[str, Any]:
    return {
        "path": row.path,
        "content": row.content,
        "size": row.size,
        "sha256": row.sha256,
        "generation_id": row.generation_id,
        "updated_at": row.updated_at,
    }


def pipeline(declared: Pipeline) -> dict[str, Any]:
    """A pipeline as GET /api/pipelines lists it: its stages, event types and inputs."""
    return {
        "name": declared.name,
        "label": declared.label,
        "description": declared.description,
        "stages": [stage.describe() for stage in declared.stages],
        "events": [spec.type for spec in declared.events],
        "inputs": declared.inputs,
    }


def document(row: DocumentRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "project_id": row.project_id,
        "title": row.title,
        "content": row.content,
        "created_at": row.created_at,
    }


def document_hit(hit: DocumentHit) -> dict[str, Any]:
    """A search's hit; the page pipeline's page.knowledge event carries the same object."""
    return {
        "document_id": hit.document_id,
        "title": hit.title,
        "snippet": hit.snippet,
        "rank": hit.rank,
    }


def persona(row: PersonaRow) -> dict[str, Any]:
    """A visitor's persona; the page pipeline's page.signals event carries the same keys
    but project_id."""
    return {
        "project_id": row.project_id,
        "visitor_id": row.visitor_id,
        "pain_points": list(row.pain_points),
        "interests": list(row.interests),
        "visits": row.visits,
        "updated_at": row.updated_at,
    }


def scene(row: SceneRow) -> dict[str, Any]:
    """A scene, as the scenes pipeline's scene.* events carry it."""
    return {
        "id": row.id,
        "project_id": row.project_id,
        "position": row.position,
        "title": row.title,
        "description": row.description,
        "duration_ms": row.duration_ms,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
    }
