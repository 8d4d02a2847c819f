"""worker engines and runtime

Revision ID: 0004
Revises: 0003

`workers.engines` holds the engine versions a node reported it can run (a JSON
list of EngineInstall: engine, version, device kinds, location, default), so
that the server refuses a `--backend-version` no ready worker has before
anything is written, and `gpufleet workers` / `gpufleet backends ls` show them
without asking every node. A node reports it at registration and again after a
`backends install` run.
`workers.runtime` says how the node runs backends (`process` or `docker`); rows
from before this revision ran processes, hence the default.
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("workers") as batch:
        batch.add_column(sa.Column("engines", sa.JSON(), nullable=False, server_default="[]"))
        batch.add_column(sa.Column("runtime", sa.String(16), nullable=False, server_default="process"))


def downgrade() -> None:
    with op.batch_alter_table("workers") as batch:
        batch.drop_column("runtime")
        batch.drop_column("engines")
