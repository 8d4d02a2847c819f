"""What every route of the gpufleet server shares: the database, the placement lock, the flow
trigger and the worker timeout. Its own module so that the route modules can name it without
importing the app that assembles them."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from gpufleet.settings import WORKER_TIMEOUT_S
from gpufleet.store.db import make_engine, migrate, session_factory

#: starts a flow run: (operation, parameters) -> run id
Trigger = Callable[[str, dict[str, Any]], str]


class ServerState:
    def __init__(self, database_url: str, trigger: Trigger) -> None:
        self.engine = make_engine(database_url)
        migrate(self.engine)
        self.sessions: sessionmaker[Session] = session_factory(self.engine)
        self.placement_lock = threading.Lock()
        self.trigger = trigger
        self.worker_timeout = timedelta(seconds=WORKER_TIMEOUT_S)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self.sessions() as s, s.begin():
            yield s
