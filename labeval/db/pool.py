"""Connection pool with the codecs labeval relies on."""

from __future__ import annotations

import asyncpg
import msgspec

_json_encoder = msgspec.json.Encoder()
_json_decoder = msgspec.json.Decoder()


def _encode_json(value: object) -> str:
    return _json_encoder.encode(value).decode("utf-8")


async def init_connection(conn: asyncpg.Connection) -> None:
    # JSONB in and out as Python objects, through msgspec (one reused encoder/decoder).
    for typename in ("json", "jsonb"):
        await conn.set_type_codec(
            typename, encoder=_encode_json, decoder=_json_decoder.decode, schema="pg_catalog"
        )


async def create_pool(url: str, *, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    return await asyncpg.create_pool(url, min_size=min_size, max_size=max_size, init=init_connection)


async def connect(url: str) -> asyncpg.Connection:
    conn = await asyncpg.connect(url)
    await init_connection(conn)
    return conn
