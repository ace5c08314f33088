"""inbox rows carry their conversation's latest activity and type, for listing an inbox and
counting its unread folders from indexes

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04 17:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import service.db

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("inbox", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("last_activity_at", service.db.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(sa.Column("message_type", sa.String(length=10), nullable=True))
    # A handler's row sees internal replies; every other row the public activity only.
    if op.get_bind().dialect.name == "postgresql":
        # One join rather than two correlated look-ups per row.
        op.execute(
            "UPDATE inbox SET last_activity_at = CASE WHEN inbox.as_handler"
            " THEN c.last_message_at ELSE c.public_last_message_at END,"
            " message_type = c.message_type"
            " FROM conversation c WHERE c.id = inbox.conversation_id"
        )
    else:
        op.execute(
            "UPDATE inbox SET last_activity_at = ("
            " SELECT CASE WHEN inbox.as_handler THEN c.last_message_at"
            " ELSE c.public_last_message_at END"
            " FROM conversation c WHERE c.id = inbox.conversation_id),"
            " message_type = ("
            " SELECT c.message_type FROM conversation c WHERE c.id = inbox.conversation_id)"
        )
    with op.batch_alter_table("inbox", schema=None) as batch_op:
        batch_op.alter_column(
            "last_activity_at",
            existing_type=service.db.UTCDateTime(timezone=True),
            nullable=False,
        )
        batch_op.alter_column("message_type", existing_type=sa.String(length=10), nullable=False)
        batch_op.create_index(
            "ix_inbox_user_activity",
            ["user_id", "last_activity_at", "conversation_id"],
            unique=False,
        )
        # Unread counts per folder from this index alone.
        batch_op.drop_index("ix_inbox_unread")
        batch_op.create_index(
            "ix_inbox_unread",
            ["user_id", "as_handler", "message_type"],
            unique=False,
            postgresql_where=sa.text("NOT read AND NOT removed"),
            sqlite_where=sa.text("NOT read AND NOT removed"),
        )


def downgrade() -> None:
    with op.batch_alter_table("inbox", schema=None) as batch_op:
        batch_op.drop_index("ix_inbox_unread")
        batch_op.create_index(
            "ix_inbox_unread",
            ["user_id", "as_handler"],
            unique=False,
            postgresql_where=sa.text("NOT read AND NOT removed"),
            sqlite_where=sa.text("NOT read AND NOT removed"),
        )
        batch_op.drop_index("ix_inbox_user_activity")
        batch_op.drop_column("message_type")
        batch_op.drop_column("last_activity_at")
