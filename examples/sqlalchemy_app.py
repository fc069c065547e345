"""A FastAPI app on SQLAlchemy's ORM over aconn: `uvicorn examples.sqlalchemy_app:app`.

The app is written as SQLAlchemy users write it (a declarative model, an
``async_sessionmaker``, a dependency that yields an ``AsyncSession``); the
engine comes from ``aconn.sqlalchemy.create_async_engine``, and
``ConnectionsMiddleware`` gives each request a scope, so that every session of a
request runs on the request's one connection, checked by aconn at the start and
given back at the end. SQLite by default (a file in the temp directory); MySQL,
MariaDB or PostgreSQL with ``DATABASE_URL`` (``postgresql://user:pw@host/db``).
Its tests, with aconn's pytest plugin: ``examples/test_sqlalchemy_app.py``.

- ``GET /notes``                 every note; and that the session's connection is the request's
- ``POST /notes?text=x``         add a note (``text=boom`` fails after the flush: nothing is kept)
- ``GET /notes/count-twice``     two sessions in child tasks at once (``asyncio.gather``)

(No ``from __future__ import annotations`` here: FastAPI reads the ``Annotated`` dependency
declared inside ``create_app`` at run time.)
"""

import asyncio
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException
from sqlalchemy import String, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import aconn
from aconn.asgi import ConnectionsMiddleware
from aconn.sqlalchemy import create_async_engine

DEFAULT_URL = f"sqlite:///{Path(tempfile.gettempdir()) / 'aconn-sqlalchemy-example.db'}?conn_max_age=60"


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "example_notes"

    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(String(200))


def create_app(database_url: str) -> FastAPI:
    connections = aconn.Connections({"default": database_url})
    engine = create_async_engine(connections)
    sessions = async_sessionmaker(engine, expire_on_commit=False)

    async def session() -> AsyncIterator[AsyncSession]:
        async with sessions() as s:
            yield s

    Session = Annotated[AsyncSession, Depends(session)]
    app = FastAPI(lifespan=connections.lifespan)
    app.add_middleware(ConnectionsMiddleware, connections=connections)

    @app.get("/notes")
    async def notes(db: Session) -> dict[str, object]:
        texts = list((await db.execute(select(Note.text).order_by(Note.id))).scalars())
        # the request's connection, as the driver's own API gets it: the session's, the same object
        raw = await connections.connection()
        same = (await db.connection()).sync_connection.connection.driver_connection is raw  # type: ignore[union-attr]
        return {"notes": texts, "one_connection": same}

    @app.post("/notes")
    async def add(text: str, db: Session) -> dict[str, object]:
        db.add(Note(text=text))
        await db.flush()
        if text == "boom":
            raise HTTPException(400, "boom: the session is rolled back")
        await db.commit()
        return {"added": text}

    @app.get("/notes/count-twice")
    async def count_twice() -> list[int]:
        async def count() -> int:
            async with sessions() as s:  # a child task: a connection of its own while it runs
                return int((await s.execute(select(func.count()).select_from(Note))).scalar_one())

        return list(await asyncio.gather(count(), count()))

    async def create_schema() -> None:
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)

    app.state.connections = connections
    app.state.create_schema = create_schema
    return app


app = create_app(os.environ.get("DATABASE_URL", DEFAULT_URL))
