"""What orchestrators ask: `/healthz` (the process answers: cheap, nothing else) and `/readyz`
(this replica should be sent calls now).

Ready means every one of: the settings calls need are present, the database answers (at the
schema this version needs) within `DATABASE_TIMEOUT_S`, the booking desk is open, and the
replica is neither draining nor holding PHONEBOT_MAX_CALLS calls. Otherwise 503 with every
reason at once, so an operator fixes them in one go.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import Request
from starlette.responses import JSONResponse

from phonebot.call.admission import Admission
from phonebot.store import migrate, status

DATABASE_TIMEOUT_S = 1.0  # well inside an orchestrator's probe timeout (Kubernetes' default is 1 s, ours 3 s)


async def database_problem(engine: AsyncEngine, schema: str, timeout_s: float = DATABASE_TIMEOUT_S) -> str | None:
    """Why the database cannot be used now, or None: it answered, at schema revision `schema`."""
    try:
        async with asyncio.timeout(timeout_s):
            found = await migrate.current(engine)
    except TimeoutError:
        return f"database: no answer within {timeout_s:g} s"
    except (SQLAlchemyError, OSError) as error:
        return f"database: {status.describe(error)}"  # in the words `phonebot doctor` uses
    if found != schema:
        return f"database: at schema revision {found or 'none'}, phonebot needs {schema} (run `phonebot db upgrade`)"
    return None


class Readiness:
    def __init__(self, problems: Sequence[str], engine: AsyncEngine, admission: Admission) -> None:
        """`problems`: what stands in the way of calls and does not change while the process runs
        (settings, the business file)."""
        self._problems = list(problems)
        self._engine = engine
        self._admission = admission
        self._schema = migrate.head()

    async def reasons(self) -> list[str]:
        """Every reason this replica should not be sent calls now; empty when it should."""
        reasons = list(self._problems)
        if (problem := await database_problem(self._engine, self._schema)) is not None:
            reasons.append(problem)
        admission = self._admission
        if admission.draining:
            reasons.append("draining: shutting down, taking no new calls")
        elif admission.full:
            reasons.append(f"full: {admission.replica_count} calls held, PHONEBOT_MAX_CALLS is {admission.max_calls}")
        return reasons

    async def readyz(self, _request: Request) -> JSONResponse:
        reasons = await self.reasons()
        if reasons:
            message = f"not ready: {len(reasons)} reason(s)"
            return JSONResponse({"error": {"code": "not_ready", "message": message, "reasons": reasons}}, 503)
        return JSONResponse({"ready": True, "active_calls": self._admission.replica_count})


async def healthz(_request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})
