"""API keys for admins: list, create (the key is in this answer only), revoke."""

from __future__ import annotations

from typing import Annotated

import asyncpg
import msgspec
from litestar import Controller, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody
from litestar.status_codes import HTTP_201_CREATED

from labeval.api.auth import ADMIN
from labeval.api.problems import spec
from labeval.db import apikeys
from labeval.db.apikeys import ApiKey, CreatedKey
from labeval.keys import Role


class KeyRequest(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    role: Role


class KeyController(Controller):
    path = "/api/v1/keys"
    tags = ["keys"]

    @get("/", opt={"roles": ADMIN})
    async def list_(self, conn: NamedDependency[asyncpg.Connection]) -> list[ApiKey]:
        """Every key ever made (never its secret), oldest first."""
        return await apikeys.list_all(conn)

    @post("/", status_code=HTTP_201_CREATED, opt={"roles": ADMIN})
    async def create(
        self, state: State, conn: NamedDependency[asyncpg.Connection], data: JSONBody[KeyRequest]
    ) -> CreatedKey:
        """A new key; `key` is shown in this answer and never again (only its keyed hash is kept)."""
        return await apikeys.create(conn, state.key_pepper, name=data.name, role=data.role)

    @post("/{key_id:int}/revoke", status_code=200, opt={"roles": ADMIN},
          responses={404: spec("No such key.")})
    async def revoke(self, conn: NamedDependency[asyncpg.Connection], key_id: FromPath[int]) -> ApiKey:
        """Revoke a key: from now on it answers 401."""
        return await apikeys.revoke(conn, key_id)
