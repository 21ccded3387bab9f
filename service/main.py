"""Run the scoring API: wire settings, store and registry into the service and serve it with uvicorn."""

from __future__ import annotations

import ipaddress

from features.settings import Settings
from features.spec import ModelSpec
from features.store import EventStore
from service.scoring import ScoringService, ServiceSettings


class UnsafeBinding(RuntimeError):
    """Binding beyond loopback without a token would let anyone on the network take decisions."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build_service(settings: Settings, specs: dict[str, ModelSpec], store: EventStore, registry) -> ScoringService:
    return ScoringService(specs, store, registry, settings.pseudonym_key, ServiceSettings.from_env(settings))


def serve_api(service: ScoringService, host: str, port: int, access_log: bool = False) -> None:
    if not is_loopback(host) and not service.config.token:
        raise UnsafeBinding(f"refusing to listen on {host} without LOOP_API_TOKEN: set a bearer token the CRM and the mail "
                            "system send, or bind to 127.0.0.1 behind a proxy that authenticates")
    import uvicorn

    from service.app import create_app

    uvicorn.run(create_app(service), host=host, port=port, access_log=access_log, log_level="warning",
                loop="uvloop", http="httptools")
