"""request ids and issue times: operations safe to retry, and a late request never wins

Revision ID: 0007
Revises: 0006

`request_log` keeps, per request id (the `Idempotency-Key` header the client sends with
every operation, the same on each retry), the answer the server gave, so that a retried
request is applied once and answered as the first time; `status` NULL means it is being
applied now. Rows older than a day go (gpufleet.store.request_log).

`deployments.replicas_issued_at` and `deployments.config_issued_at` hold when the request
that last set the replica count (scale, stop, start) or the configuration (edit) was issued
by its client (`Gpufleet-Issued-At`, else when the server received it): a request issued
earlier that arrives later is refused (412) instead of undoing the newer one. NULL: not
set by a request since this revision.
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "request_log",
        sa.Column("request_id", sa.String(64), primary_key=True),
        sa.Column("method", sa.String(8), nullable=False),
        sa.Column("path", sa.String(255), nullable=False),
        sa.Column("status", sa.Integer(), nullable=True),
        sa.Column("body", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_request_log_created_at", "request_log", ["created_at"])
    with op.batch_alter_table("deployments") as batch:
        batch.add_column(sa.Column("replicas_issued_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("config_issued_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("deployments") as batch:
        batch.drop_column("config_issued_at")
        batch.drop_column("replicas_issued_at")
    op.drop_index("ix_request_log_created_at", "request_log")
    op.drop_table("request_log")
