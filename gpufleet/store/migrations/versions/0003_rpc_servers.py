"""distributed instances: worker capabilities and the RPC servers of an instance

Revision ID: 0003
Revises: 0002

`workers.capabilities` says what a node can run beyond one llama.cpp process
(`llama.cpp-rpc`: it has rpc-server and an RPC-enabled llama-server), so that
placement only distributes over workers that can take part.
`instances.rpc_servers` holds the RPC servers the part workers of a distributed
instance started (worker, GPU, host, port, pid); the main worker's llama-server
is started with them.
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("workers") as batch:
        batch.add_column(sa.Column("capabilities", sa.JSON(), nullable=False, server_default="[]"))
    with op.batch_alter_table("instances") as batch:
        batch.add_column(sa.Column("rpc_servers", sa.JSON(), nullable=False, server_default="[]"))


def downgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.drop_column("rpc_servers")
    with op.batch_alter_table("workers") as batch:
        batch.drop_column("capabilities")
