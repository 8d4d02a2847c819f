"""workers: labels set by an operator

Revision ID: 0006
Revises: 0005

`workers.labels` is what the node reports when it registers (`gpufleet node --label`), and a
node replaces it every time it registers again. Labels an operator sets through the API or
the web page (`PATCH /v1/workers/NAME`) live apart, in `operator_labels`, so that a node
restart does not undo them; a worker's labels are the node's with the operator's over them.
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("workers") as batch:
        batch.add_column(sa.Column("operator_labels", sa.JSON(), nullable=False, server_default="{}"))


def downgrade() -> None:
    with op.batch_alter_table("workers") as batch:
        batch.drop_column("operator_labels")
