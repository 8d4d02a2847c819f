"""SQLAlchemy tables of the gpufleet database. Only the gpufleet server writes them."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, ForeignKey, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    pass


class WorkerRow(Base):
    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    address: Mapped[str] = mapped_column(String(255))
    work_queue: Mapped[str] = mapped_column(String(128))
    labels: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    #: labels set through the API, over the node's own (a node's registration never touches them)
    operator_labels: Mapped[dict[str, str]] = mapped_column(JSON, default=dict, server_default="{}")
    gpus: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    cpu_count: Mapped[int] = mapped_column(Integer)
    memory_total: Mapped[int] = mapped_column(BigInteger)
    # Memory placement must leave free: RAM for the OS and node, VRAM on each GPU.
    ram_reserved: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    vram_reserved: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    capabilities: Mapped[list[str]] = mapped_column(JSON, default=list, server_default="[]")
    #: EngineInstall dicts: the engine versions the node reported it can run (migration 0004)
    engines: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list, server_default="[]")
    #: how the node runs backends: "process" or "docker"
    runtime: Mapped[str] = mapped_column(String(16), default="process", server_default="process")
    last_heartbeat: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    registered_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class DeploymentRow(Base):
    __tablename__ = "deployments"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(63), unique=True, index=True)
    replicas: Mapped[int] = mapped_column(Integer)
    # DeploymentConfig as JSON: source, backend, backend_version, backend_params, env
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    generation: Mapped[int] = mapped_column(Integer, default=1)
    model_metadata: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    estimate: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    deleting: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    #: when the requests that last set `replicas` / `config` were issued (migration 0007)
    replicas_issued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    config_issued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    #: N of `edit --rollout --max-unavailable N` while a rollout runs, else NULL (migration 0010)
    rollout_max_unavailable: Mapped[int | None] = mapped_column(Integer, nullable=True)
    #: how the last rollout went, in words ("" when there was none)
    rollout_status: Mapped[str] = mapped_column(Text, default="", server_default="")

    instances: Mapped[list[InstanceRow]] = relationship(back_populates="deployment")


class InstanceRow(Base):
    __tablename__ = "instances"
    __table_args__ = {"sqlite_autoincrement": True}  # ids are never reused

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(80), unique=True)
    deployment_id: Mapped[int] = mapped_column(ForeignKey("deployments.id"), index=True)
    state: Mapped[str] = mapped_column(String(16))
    state_message: Mapped[str] = mapped_column(Text, default="")
    # The deployment's config when this instance was created (edit never changes it).
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    generation: Mapped[int] = mapped_column(Integer)
    worker_name: Mapped[str | None] = mapped_column(String(63), index=True, nullable=True)
    # Placement incl. claims: {"worker", "gpu_indexes", "vram_claim", "ram_claim"}
    placement: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    port: Mapped[int | None] = mapped_column(Integer, nullable=True)
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    #: RpcServerInfo dicts reported by the part workers of a distributed instance
    rpc_servers: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list, server_default="[]")
    restart_count: Mapped[int] = mapped_column(Integer, default=0)
    #: when the plan restarts it next (ERROR only; migration 0008): survives a server restart
    next_restart_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    #: when it last became RUNNING (the stable window that resets restart_count counts from here)
    running_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    deleting: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    deployment: Mapped[DeploymentRow] = relationship(back_populates="instances")


class PlacementLedgerRow(Base):
    """One row: the lock every placement transaction takes first, and a counter of
    claims taken and released (see migration 0002)."""

    __tablename__ = "placement_ledger"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    claims_version: Mapped[int] = mapped_column(BigInteger, default=0)
    locked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    #: rewritten with every change of the claims: an in-memory ledger is current only while
    #: the database holds the token it wrote (migration 0005)
    claims_token: Mapped[str] = mapped_column(String(32), default="", server_default="")
    #: bumped by every worker registration (heartbeats only change readiness)
    workers_version: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")


class RequestLogRow(Base):
    """The answer given to a request id, so that a retry is applied once (migration 0007)."""

    __tablename__ = "request_log"

    request_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    method: Mapped[str] = mapped_column(String(8))
    path: Mapped[str] = mapped_column(String(255))
    status: Mapped[int | None] = mapped_column(Integer, nullable=True)  # None: being applied
    body: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)


class ApiKeyRow(Base):
    """A credential the server accepts, stored hashed (migration 0009, gpufleet.store.keys)."""

    __tablename__ = "api_keys"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    #: the public part of the token (`gf_<prefix>_<secret>`): how a key is found and named
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    secret_hash: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(63))
    #: admin, operator, inference, node or join
    role: Mapped[str] = mapped_column(String(16))
    models: Mapped[list[str]] = mapped_column(JSON, default=list, server_default="[]")
    worker: Mapped[str | None] = mapped_column(String(63), nullable=True, index=True)
    #: for a node credential: what the server presents to that node's API
    peer_token: Mapped[str | None] = mapped_column(String(128), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
