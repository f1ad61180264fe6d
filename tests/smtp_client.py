"""A raw SMTP client for tests that need exact bytes on the wire (smuggling, bare LF)."""

from __future__ import annotations

import asyncio
import base64


class RawSmtp:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int, host: str = "127.0.0.1", *,
                      source: str | None = None) -> RawSmtp:
        """Connect and read the 220 greeting. ``source`` picks the client's own address
        (any of 127.0.0.0/8 on loopback): a second client "from another host"."""
        reader, writer = await asyncio.open_connection(
            host, port, local_addr=(source, 0) if source else None)
        client = cls(reader, writer)
        code, _ = await client.reply()
        assert code == 220
        return client

    async def reply(self, timeout: float = 10.0) -> tuple[int, str]:
        lines: list[str] = []
        async with asyncio.timeout(timeout):
            while True:
                line = await self.reader.readline()
                if not line:
                    raise ConnectionError("connection closed: " + " | ".join(lines))
                text = line.decode("utf-8", "replace").rstrip("\r\n")
                lines.append(text[4:])
                if text[3:4] != "-":
                    return int(text[:3]), "\n".join(lines)

    async def cmd(self, line: str) -> tuple[int, str]:
        self.writer.write(line.encode() + b"\r\n")
        await self.writer.drain()
        return await self.reply()

    async def auth_plain(self, login: str, password: str) -> tuple[int, str]:
        """``AUTH PLAIN`` with the initial response (RFC 4616: NUL login NUL password)."""
        token = base64.b64encode(f"\0{login}\0{password}".encode()).decode()
        return await self.cmd(f"AUTH PLAIN {token}")

    async def write(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, OSError):
            pass
