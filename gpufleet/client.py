"""HTTP client of the gpufleet server, shared by the CLI, the Prefect tasks and node agents."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import httpx

from gpufleet import credentials

from gpufleet.core.keys import KeyCreate, KeyCreated, KeyView, NodeCredentials
from gpufleet.core.placement import ClusterSnapshot, PlanResult
from gpufleet.core.schemas import (
    BackendInstallRequest,
    EngineInstall,
    RpcServerInfo,
    RunProgress,
    DeploymentEdit,
    DeploymentEdited,
    DeploymentSpec,
    DeploymentView,
    InstanceStateUpdate,
    InstanceView,
    OperationAccepted,
    AppliedPlan,
    ReconcileRequest,
    StateReportsResult,
    WorkerRegistration,
    WorkerView,
)

DEFAULT_SERVER_URL = "http://127.0.0.1:8470"


def server_url() -> str:
    return os.environ.get("GPUFLEET_SERVER_URL", DEFAULT_SERVER_URL).rstrip("/")


class ApiError(RuntimeError):
    """The server refused a request; `detail` is its explanation."""

    def __init__(self, status: int, detail: str, retry_after: bool = False) -> None:
        super().__init__(f"{detail} (HTTP {status})")
        self.status = status
        self.detail = detail
        #: the server asked to try again later (e.g. the same request id still being applied)
        self.retry_after = retry_after


class ServerUnavailable(RuntimeError):
    """The server could not be reached: the request was not applied."""


class ServerTimeout(ServerUnavailable):
    """The server did not answer in time: the request may still be applied (or may have been)."""


#: headers of every operation: its id, the same on each retry (the server applies it once), and
#: when it was issued (a request issued earlier that arrives later never undoes it); see
#: gpufleet.server.request_ids and gpufleet.store.ordering
REQUEST_ID = "Idempotency-Key"
ISSUED_AT = "Gpufleet-Issued-At"
_MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def operation_headers(issued_at: datetime | None = None) -> dict[str, str]:
    when = issued_at or datetime.now(timezone.utc)
    return {REQUEST_ID: uuid.uuid4().hex, ISSUED_AT: when.astimezone(timezone.utc).isoformat()}


def _detail(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return resp.text or resp.reason_phrase
    detail = body.get("detail", body) if isinstance(body, dict) else body
    if isinstance(detail, list):  # FastAPI validation errors
        parts = []
        for err in detail:
            loc = ".".join(str(x) for x in err.get("loc", []) if x not in ("body",))
            parts.append(f"{loc}: {err.get('msg')}" if loc else str(err.get("msg")))
        return "; ".join(parts)
    return str(detail)


class GpufleetClient:
    def __init__(self, base_url: str | None = None, timeout: float = 30.0, retries: int = 0,
                 retry_timeouts: bool = True, api_key: str | None = None) -> None:
        """`retries`: how often to retry, with exponential backoff from 0.25 s, when the server
        cannot be reached, answers 502/503/504, or is still applying the same request (409 with
        Retry-After). A retry is safe: it carries the first try's request id and issue time, so
        the server applies the operation once. `retry_timeouts=False` reports a timeout at once
        instead (the CLI: a person decides whether to wait longer). `api_key`: default
        GPUFLEET_API_KEY, else the credentials file (gpufleet.credentials)."""
        key = api_key if api_key is not None else credentials.api_key()
        self.base_url = (base_url or server_url()).rstrip("/")
        self.retries = retries
        self.retry_timeouts = retry_timeouts
        self.timeout = timeout
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout,
                                  headers={"Authorization": f"Bearer {key}"} if key else None)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> GpufleetClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, *, issued_at: datetime | None = None, **kwargs: Any) -> Any:
        if method in _MUTATING:
            kwargs["headers"] = {**operation_headers(issued_at), **kwargs.get("headers", {})}
        for attempt in range(self.retries + 1):
            try:
                return self._request_once(method, path, **kwargs)
            except (ServerUnavailable, ApiError) as exc:
                if attempt == self.retries or not self._transient(exc):
                    raise
                time.sleep(0.25 * 2**attempt)
        raise AssertionError("unreachable")

    def _transient(self, exc: Exception) -> bool:
        if isinstance(exc, ServerTimeout):
            return self.retry_timeouts
        if isinstance(exc, ServerUnavailable):
            return True
        assert isinstance(exc, ApiError)
        return exc.status in (502, 503, 504) or (exc.status == 409 and exc.retry_after)

    def _request_once(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            resp = self._http.request(method, path, **kwargs)
        except httpx.ConnectTimeout as exc:
            raise ServerUnavailable(
                f"could not connect to the gpufleet server at {self.base_url} within {self.timeout:g} s, so "
                "nothing was sent; is it running and reachable? Set GPUFLEET_SERVER_URL otherwise") from exc
        except httpx.TimeoutException as exc:
            if method in _MUTATING:
                raise ServerTimeout(
                    f"the gpufleet server at {self.base_url} did not answer {method} {path} within "
                    f"{self.timeout:g} s; the request may still be applied — check `gpufleet ls` "
                    "(or `gpufleet ps`) before sending it again") from exc
            raise ServerTimeout(f"the gpufleet server at {self.base_url} did not answer {method} {path} within "
                                f"{self.timeout:g} s; it may be overloaded — try again") from exc
        except httpx.TransportError as exc:
            raise ServerUnavailable(
                f"cannot reach the gpufleet server at {self.base_url} ({type(exc).__name__}: {exc}); "
                "is `gpufleet up` (or `gpufleet server`) running? Set GPUFLEET_SERVER_URL otherwise"
            ) from exc
        if resp.status_code == 401:
            raise ApiError(401, f"{_detail(resp)} — the CLI reads its key from {credentials.API_KEY_ENV} or "
                                f"{credentials.credentials_path()}")
        if resp.status_code >= 400:
            raise ApiError(resp.status_code, _detail(resp), retry_after="retry-after" in resp.headers)
        return resp.json() if resp.content else None

    # -- deployments
    def health(self) -> dict[str, Any]:
        return self._request("GET", "/v1/health")

    def create_deployment(self, spec: DeploymentSpec) -> OperationAccepted:
        data = self._request("POST", "/v1/deployments", json=_spec_json(spec))
        return OperationAccepted.model_validate(data)

    def register_deployment(self, spec: DeploymentSpec) -> DeploymentView:
        """Create the deployment record without starting a flow (used by the deploy flow)."""
        data = self._request(
            "PUT", f"/v1/deployments/{spec.name}/record", json=spec.model_dump(mode="json")
        )
        return DeploymentView.model_validate(data)

    def list_deployments(self) -> list[DeploymentView]:
        return [DeploymentView.model_validate(d) for d in self._request("GET", "/v1/deployments")]

    def get_deployment(self, name: str) -> DeploymentView:
        return DeploymentView.model_validate(self._request("GET", f"/v1/deployments/{name}"))

    def edit_deployment(self, name: str, edit: DeploymentEdit) -> DeploymentEdited:
        """Records the edit and starts its `edit` flow run (with rollout: the replacement)."""
        data = self._request(
            "PATCH", f"/v1/deployments/{name}", json=edit.model_dump(mode="json", exclude_none=True)
        )
        return DeploymentEdited.model_validate(data)

    def scale(self, name: str, replicas: int, *, trigger: bool = True,
              issued_at: datetime | None = None) -> OperationAccepted:
        """`issued_at`: when the scale was asked for (default: now); the server refuses (412) a
        scale issued before the one that last set the count."""
        data = self._request(
            "POST",
            f"/v1/deployments/{name}/scale",
            json={"replicas": replicas},
            params={"trigger": str(trigger).lower()},
            issued_at=issued_at,
        )
        return OperationAccepted.model_validate(data)

    def delete_deployment(self, name: str) -> OperationAccepted:
        return OperationAccepted.model_validate(self._request("DELETE", f"/v1/deployments/{name}"))

    # -- instances
    def list_instances(
        self, deployment: str | None = None, worker: str | None = None, ids: list[int] | None = None
    ) -> list[InstanceView]:
        params: dict[str, Any] = {k: v for k, v in {"deployment": deployment, "worker": worker}.items() if v}
        if ids:
            params["id"] = ids
        data = self._request("GET", "/v1/instances", params=params)
        return [InstanceView.model_validate(i) for i in data]

    def get_instance(self, instance_id: int) -> InstanceView:
        return InstanceView.model_validate(self._request("GET", f"/v1/instances/{instance_id}"))

    def delete_instance(self, instance_id: int) -> OperationAccepted:
        data = self._request("DELETE", f"/v1/instances/{instance_id}")
        return OperationAccepted.model_validate(data)

    def restart_instance(self, instance_id: int) -> OperationAccepted:
        data = self._request("POST", f"/v1/instances/{instance_id}/restart")
        return OperationAccepted.model_validate(data)

    def stream_logs(self, instance_id: int, tail: int | None, follow: bool, previous: int = 0,
                    part: str | None = None, gpu: int | None = None) -> Iterator[str]:
        """``previous``: 0 the current run's log, n the n-th run before it; ``part``: a part
        worker of a distributed instance (its rpc-server logs; ``gpu``: one of them)."""
        params: dict[str, Any] = {"follow": str(follow).lower()}
        if part is not None:
            params["part"] = part
            if gpu is not None:
                params["gpu"] = gpu
        if tail is not None:
            params["tail"] = tail
        if previous:
            params["previous"] = previous
        try:
            with self._http.stream(
                "GET", f"/v1/instances/{instance_id}/logs", params=params, timeout=None
            ) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    raise ApiError(resp.status_code, _detail(resp))
                yield from resp.iter_text()
        except httpx.TransportError as exc:
            raise ServerUnavailable(f"lost the log stream from {self.base_url}: {exc}") from exc

    # -- internal: used by flows and node agents
    def reconcile(self, name: str, stopped: list[int] | None = None, retry_unplaced: bool = True) -> AppliedPlan:
        """Apply the deployment's plan on the server; returns the node actions left."""
        body = ReconcileRequest(stopped=stopped or [], retry_unplaced=retry_unplaced)
        data = self._request("POST", f"/v1/internal/deployments/{name}/reconcile", json=body.model_dump())
        return AppliedPlan.model_validate(data)

    def report_states(self, reports: dict[int, InstanceStateUpdate]) -> StateReportsResult:
        body = {"reports": {str(k): v.model_dump(mode="json", exclude_none=True) for k, v in reports.items()}}
        return StateReportsResult.model_validate(self._request("PUT", "/v1/internal/instances/states", json=body))

    def mark_deployment_deleting(self, name: str) -> None:
        self._request("POST", f"/v1/internal/deployments/{name}/deleting")

    def mark_deleting(self, instance_id: int) -> InstanceView:
        data = self._request("POST", f"/v1/internal/instances/{instance_id}/deleting")
        return InstanceView.model_validate(data)

    # -- placement: snapshot and dry run
    def cluster_snapshot(self) -> ClusterSnapshot:
        return ClusterSnapshot.model_validate(self._request("GET", "/v1/cluster/snapshot"))

    def plan(self, spec: DeploymentSpec, cluster: ClusterSnapshot | None = None) -> PlanResult:
        body = {"spec": _spec_json(spec),
                "cluster": cluster.model_dump(mode="json") if cluster is not None else None}
        return PlanResult.model_validate(self._request("POST", "/v1/plan", json=body))

    def report_state(self, instance_id: int, update: InstanceStateUpdate) -> InstanceView:
        data = self._request(
            "PUT",
            f"/v1/internal/instances/{instance_id}/state",
            json=update.model_dump(mode="json", exclude_none=True),
        )
        return InstanceView.model_validate(data)

    def report_rpc_servers(self, instance_id: int, worker: str, servers: list[RpcServerInfo]) -> InstanceView:
        data = self._request("PUT", f"/v1/internal/instances/{instance_id}/rpc-servers/{worker}",
                             json=[x.model_dump(mode="json") for x in servers])
        return InstanceView.model_validate(data)

    def remove_instance_record(self, instance_id: int) -> None:
        self._request("DELETE", f"/v1/internal/instances/{instance_id}")

    def remove_deployment_record(self, name: str) -> None:
        self._request("DELETE", f"/v1/internal/deployments/{name}")

    def register_worker(self, reg: WorkerRegistration) -> WorkerView:
        data = self._request("POST", "/v1/workers", json=reg.model_dump(mode="json"))
        return WorkerView.model_validate(data)

    def heartbeat(self, name: str, gpus_used_outside: dict[int, int] | None = None) -> bool:
        """Returns True when the server asks the node to re-report its backends."""
        body = {"gpus_used_outside": {str(k): v for k, v in gpus_used_outside.items()}} if gpus_used_outside else None
        return bool(self._request("POST", f"/v1/workers/{name}/heartbeat", json=body).get("resync"))

    def list_workers(self) -> list[WorkerView]:
        return [WorkerView.model_validate(w) for w in self._request("GET", "/v1/workers")]

    def remove_worker(self, name: str, force: bool = False) -> list[int]:
        """Decommission a worker; returns the instances that were placed on it."""
        data = self._request("DELETE", f"/v1/workers/{name}", params={"force": str(force).lower()})
        return list(data.get("instances", []))

    # -- backend versions
    def install_backend(self, worker: str, req: BackendInstallRequest) -> OperationAccepted:
        data = self._request("POST", f"/v1/workers/{worker}/backends", json=req.model_dump(mode="json"))
        return OperationAccepted.model_validate(data)

    def report_engines(self, worker: str, engines: list[EngineInstall]) -> WorkerView:
        data = self._request("PUT", f"/v1/internal/workers/{worker}/engines",
                             json=[e.model_dump(mode="json") for e in engines])
        return WorkerView.model_validate(data)

    # -- API keys (admin) and node joins: docs/auth.md
    def create_key(self, body: KeyCreate) -> KeyCreated:
        return KeyCreated.model_validate(self._request("POST", "/v1/keys", json=body.model_dump(mode="json")))

    def list_keys(self) -> list[KeyView]:
        return [KeyView.model_validate(k) for k in self._request("GET", "/v1/keys")]

    def delete_key(self, ref: str) -> KeyView:
        return KeyView.model_validate(self._request("DELETE", f"/v1/keys/{ref}"))

    def create_join_token(self) -> KeyCreated:
        return KeyCreated.model_validate(self._request("POST", "/v1/join-tokens"))

    def join(self, name: str) -> NodeCredentials:
        """With a join token as this client's key: this node's own credentials."""
        return NodeCredentials.model_validate(self._request("POST", "/v1/nodes/join", json={"name": name}))

    def run_progress(self, flow_run_id: str, offset: int = 0) -> RunProgress:
        return RunProgress.model_validate(self._request("GET", f"/v1/runs/{flow_run_id}", params={"offset": offset}))


def _spec_json(spec: DeploymentSpec) -> dict[str, object]:
    """The spec as the server should read it: a backend the user did not choose is left out,
    so the server picks it from the model (its default would otherwise read as a choice)."""
    data = spec.model_dump(mode="json")
    if "backend" not in spec.model_fields_set:
        data.pop("backend", None)
    return data
