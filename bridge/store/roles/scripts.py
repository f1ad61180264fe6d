"""Reply scripts registered through the admin API (:class:`bridge.store.base.ScriptRegistry`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from bridge.store.queries import Op, SqlRoles, count, row, rows, single
from bridge.store.rows import ReplyScript

SCRIPT_KEYS = ("id", "shortcode", "keyword", "url", "method", "timeout", "secret",
               "created_at", "updated_at")


def _script(found: Sequence[Any]) -> ReplyScript:
    return cast(ReplyScript, dict(zip(SCRIPT_KEYS, tuple(found), strict=True)))


def list_scripts() -> Op[list[ReplyScript]]:
    return [_script(found) for found in (yield rows("list_reply_scripts"))]


def save_script(script: dict[str, Any], now: float,
                script_id: int | None) -> Op[ReplyScript | None]:
    values = (script["shortcode"], script.get("keyword"), script["url"], script["method"],
              float(script["timeout"]), script.get("secret"))
    if script_id is None:
        found = yield row("insert_reply_script", *values, now, now)
    else:
        found = yield row("update_reply_script", *values, now, script_id)
    return None if found is None else _script(found)


class ScriptRegistryMethods(SqlRoles):
    async def list_reply_scripts(self) -> list[ReplyScript]:
        return await self._read_op(list_scripts)

    async def save_reply_script(
        self, script: dict[str, Any], now: float, script_id: int | None = None
    ) -> ReplyScript | None:
        """Create (``script_id`` None) or replace a reply script; None if it does not exist."""
        return await self._lock_op(lambda: save_script(script, now, script_id))

    async def delete_reply_script(self, script_id: int) -> bool:
        return bool(await self._lock_op(lambda: single(count("delete_reply_script",
                                                             script_id))))
