"""alembic environment for fedhub's state database.

fedhub runs alembic programmatically (fedhub.hub.statedb.migrate), never from an
alembic.ini: the caller opens the connection (and its transaction, holding the upgrade
lock) and hands it over in `config.attributes["connection"]`.
"""

from alembic import context

connection = context.config.attributes["connection"]
# batch mode: SQLite cannot ALTER most things in place; alembic copies the table instead
context.configure(connection=connection, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
