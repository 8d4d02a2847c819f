"""placement ledger: claims token and workers version

Revision ID: 0005
Revises: 0004

A server keeps its placement ledger in memory between placements (`store/ledger.py`) and
must know when the database changed under it. `claims_token` is a random value rewritten
with every change of the claims (with `claims_version`), so a copy is reused only if the
database still holds the token that copy wrote — another server process, a deletion, a
rolled-back transaction or a recreated database all make it stale. `workers_version` counts
registrations (what a worker has: GPUs, labels, memory, engines); heartbeats only change
readiness, which is read on every placement.
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("placement_ledger") as batch:
        batch.add_column(sa.Column("claims_token", sa.String(32), nullable=False, server_default=""))
        batch.add_column(sa.Column("workers_version", sa.BigInteger(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("placement_ledger") as batch:
        batch.drop_column("workers_version")
        batch.drop_column("claims_token")
