"""The gateway's knobs, from the environment (GPUFLEET_GATEWAY_*), read once per gateway."""

from __future__ import annotations

from dataclasses import dataclass

from gpufleet.settings import env_number


@dataclass(frozen=True)
class GatewaySettings:
    #: the routing table is reused for this long before it is read again (and on a miss)
    refresh_s: float = 1.0
    #: how long a request for a deployment with no RUNNING replica waits for one before 503
    wait_s: float = 30.0
    #: the whole request, first token to last: long, because a slow first token is normal
    #: (a big prompt, a queue at the backend) and must not be cut by an idle timeout
    request_timeout_s: float = 600.0
    #: connecting to a replica; a replica that does not accept in this time is tried no more
    connect_timeout_s: float = 5.0
    #: how often a waiting request looks at the table again
    poll_s: float = 0.25

    @classmethod
    def from_env(cls) -> "GatewaySettings":
        base = cls()
        return cls(
            refresh_s=env_number("GPUFLEET_GATEWAY_REFRESH_S", base.refresh_s, positive=True),
            wait_s=env_number("GPUFLEET_GATEWAY_WAIT_S", base.wait_s, positive=False),
            request_timeout_s=env_number("GPUFLEET_GATEWAY_TIMEOUT_S", base.request_timeout_s, positive=True),
            connect_timeout_s=env_number("GPUFLEET_GATEWAY_CONNECT_TIMEOUT_S", base.connect_timeout_s,
                                         positive=True),
            poll_s=min(base.poll_s, env_number("GPUFLEET_GATEWAY_REFRESH_S", base.refresh_s, positive=True)),
        )
