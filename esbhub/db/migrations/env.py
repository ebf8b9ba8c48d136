"""Alembic environment: runs on the connection handed in by ``esbhub.db.upgrade`` or on
``sqlalchemy.url`` (``alembic -x`` is not needed)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import pool

from esbhub.db import Base, import_models, make_engine

import_models()
config = context.config
target_metadata = Base.metadata


def run_migrations_offline() -> None:
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    conn = config.attributes.get("connection")
    if conn is not None:
        context.configure(connection=conn, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    eng = make_engine(config.get_main_option("sqlalchemy.url"), poolclass=pool.NullPool)
    with eng.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
