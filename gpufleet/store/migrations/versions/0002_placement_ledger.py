"""placement: reserved memory per worker, and the ledger lock row

Revision ID: 0002
Revises: 0001

`placement_ledger` has one row. Every transaction that reads free memory and
then claims it first writes that row (`UPDATE ... SET locked_at`), which makes
concurrent placements queue up on the database itself — across server
processes, on PostgreSQL (row lock until commit) and SQLite (the write lock is
taken by the first statement, so the transaction's reads are never stale).
`claims_version` counts claims taken and released: the controller watches it to
re-place PENDING instances as soon as memory is freed.
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("workers") as batch:
        batch.add_column(sa.Column("ram_reserved", sa.BigInteger(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("vram_reserved", sa.BigInteger(), nullable=False, server_default="0"))
    ledger = op.create_table(
        "placement_ledger",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("claims_version", sa.BigInteger(), nullable=False),
        sa.Column("locked_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.bulk_insert(ledger, [{"id": 1, "claims_version": 0, "locked_at": None}])


def downgrade() -> None:
    op.drop_table("placement_ledger")
    with op.batch_alter_table("workers") as batch:
        batch.drop_column("vram_reserved")
        batch.drop_column("ram_reserved")
