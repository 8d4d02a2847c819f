"""rollout

Revision ID: 0010
Revises: 0008

`gpufleet edit NAME … --rollout` replaces running instances with ones of the new
configuration, N at a time. `deployments.rollout_max_unavailable` is that N while a rollout is
in progress (NULL otherwise): the reconcile plan reads it, so a rollout interrupted by a
server restart goes on where it was. `deployments.rollout_status` says how the last rollout
went ("rolling out generation 3: 1 of 2 replaced", "stopped: …", "done"), for the CLI and the
API. Which instances are old is read from their own copy of the configuration (see
gpufleet.core.rollout), so no instance column is needed.

(0009 is the authentication migration of another branch; when both are merged this one
revises 0009.)
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deployments") as batch:
        batch.add_column(sa.Column("rollout_max_unavailable", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("rollout_status", sa.Text(), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("deployments") as batch:
        batch.drop_column("rollout_status")
        batch.drop_column("rollout_max_unavailable")
