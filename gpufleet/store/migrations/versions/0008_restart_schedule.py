"""restart schedule

Revision ID: 0008
Revises: 0007

`instances.next_restart_at` is the time the reconcile plan restarts an instance in ERROR
next (its back-off: at once, then 10 s, 20 s, 40 s … capped at 300 s), stored so that a
server restart neither forgets nor shortens it, and `gpufleet ps` can say "restarting in
40 s, attempt 4". `instances.running_since` is when the instance last became RUNNING: a run
healthy for the stable window (10 minutes) resets its restart count. Both are NULL outside
those states, and for rows from before this revision.
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.add_column(sa.Column("next_restart_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("running_since", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.drop_column("running_since")
        batch.drop_column("next_restart_at")
