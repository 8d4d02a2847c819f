"""api keys: credentials of users, nodes, join tokens and the server's own controller

Revision ID: 0009
Revises: 0008

`api_keys` holds every credential the server accepts, hashed (SHA-256 of a 256-bit random
token: a fast hash is right for a high-entropy token, and it is checked on every request, see
docs/auth.md). `prefix` is the token's public identifier (`gf_<prefix>_<secret>`), shown by
`gpufleet keys ls`. `role` is admin, operator, inference, node or join (a join token, which
only registers nodes); `models` the deployments it is scoped to (empty: all); `worker` the
worker a node credential was issued to; `peer_token` the credential the server presents to
that node's own API (logs), which the server must know in clear to send it.
`last_used_at` is written at most once a minute per key, not per request.
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("prefix", sa.String(16), nullable=False, unique=True),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("models", sa.JSON(), nullable=False, server_default="[]"),
        sa.Column("worker", sa.String(63), nullable=True),
        sa.Column("peer_token", sa.String(128), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_api_keys_worker", "api_keys", ["worker"])


def downgrade() -> None:
    op.drop_index("ix_api_keys_worker", "api_keys")
    op.drop_table("api_keys")
