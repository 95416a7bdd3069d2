"""SQL tables of the event store, its bookkeeping and the projections (SQLAlchemy Core).

This metadata is Alembic's target (migrations/); a test checks that ``upgrade head`` matches it.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_name)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "pk": "pk_%(table_name)s",
}
metadata = MetaData(naming_convention=NAMING)

# SQLite only makes a column an alias of the rowid (and so auto-incrementing) when it is declared
# INTEGER, not BIGINT; PostgreSQL gets a real BIGINT identity.
BigId = BigInteger().with_variant(Integer(), "sqlite")
Timestamp = DateTime(timezone=True)

events = Table(
    "events",
    metadata,
    # seq order equals commit order: see SqlEventStore._lock_for_append for how.
    Column("seq", BigId, Identity(), primary_key=True),
    Column("event_id", String(128), nullable=False, unique=True),
    Column("type", String(64), nullable=False, index=True),
    Column("schema_version", Integer, nullable=False),
    Column("occurred_at", Timestamp, nullable=False),
    Column("recorded_at", Timestamp, nullable=False),
    Column("source", String(256), nullable=False),
    Column("request_id", String(256), nullable=True, index=True),
    # Canonical JSON text rather than JSON/JSONB: it is what we hash and compare byte for byte, and it
    # is portable between SQLite and PostgreSQL.
    Column("payload", Text, nullable=False),
    Column("kafka_topic", String(249), nullable=True),
    Column("kafka_partition", Integer, nullable=True),
    Column("kafka_offset", BigInteger, nullable=True),
    sqlite_autoincrement=True,
)

consumer_offsets = Table(
    "consumer_offsets",
    metadata,
    Column("group_id", String(255), primary_key=True),
    Column("topic", String(249), primary_key=True),
    Column("partition", Integer, primary_key=True),
    Column("next_offset", BigInteger, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
)

dead_letters = Table(
    "dead_letters",
    metadata,
    Column("id", BigId, Identity(), primary_key=True),
    Column("source_key", String(512), nullable=False, unique=True),
    Column("error_kind", String(64), nullable=False, index=True),
    Column("reason", Text, nullable=False),
    Column("event_id", String(128), nullable=True),
    Column("kafka_topic", String(249), nullable=True),
    Column("kafka_partition", Integer, nullable=True),
    Column("kafka_offset", BigInteger, nullable=True),
    Column("message_key", LargeBinary, nullable=True),
    Column("message_value", LargeBinary, nullable=True),
    Column("headers", Text, nullable=False),
    Column("created_at", Timestamp, nullable=False),
    # The dead-letter table is also the outbox of the DLQ topic: a row is published after it commits.
    Column("published_at", Timestamp, nullable=True),
    Column("requeued_at", Timestamp, nullable=True),
    sqlite_autoincrement=True,
)
Index(
    "ix_dead_letters_unpublished",
    dead_letters.c.id,
    sqlite_where=dead_letters.c.published_at.is_(None),
    postgresql_where=dead_letters.c.published_at.is_(None),
)

projection_checkpoints = Table(
    "projection_checkpoints",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("last_seq", BigInteger, nullable=False),
)

monitor_checkpoints = Table(
    "monitor_checkpoints",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("last_seq", BigInteger, nullable=False),
    # Every detector's state (JSON), saved with the checkpoint and the alerts it led to, in one transaction.
    Column("state", Text, nullable=False),
)

# --- projections (rebuilt by `alignd replay`; no wall-clock columns, so a rebuild is byte-identical) ---

proj_interactions = Table(
    "proj_interactions",
    metadata,
    Column("request_id", String(256), primary_key=True),
    Column("interaction_seq", BigInteger, nullable=False),
    Column("event_id", String(128), nullable=False),
    Column("occurred_at", String(40), nullable=False),
    Column("model_name", String(256), nullable=False),
    Column("model_version", String(128), nullable=False),
    # "text": prompt is the prompt string; "messages": prompt is the canonical JSON of the chat messages.
    Column("prompt_kind", String(16), nullable=False),
    Column("prompt", Text, nullable=False),
    Column("response", Text, nullable=False),
    Column("user_id", String(256), nullable=True),
    Column("session_id", String(256), nullable=True),
    Column("feedback_count", Integer, nullable=False),
    Column("thumbs_up", Integer, nullable=False),
    Column("thumbs_down", Integer, nullable=False),
    Column("rating_count", Integer, nullable=False),
    Column("rating_sum", Integer, nullable=False),
    Column("last_rating", Integer, nullable=True),
    Column("flags", Text, nullable=False),
    Column("corrections", Integer, nullable=False),
    Column("preferences", Integer, nullable=False),
    Column("signals", Integer, nullable=False),
    Column("last_feedback_seq", BigInteger, nullable=True),
)
Index("ix_proj_interactions_model", proj_interactions.c.model_name, proj_interactions.c.model_version)

proj_preference_pairs = Table(
    "proj_preference_pairs",
    metadata,
    Column("pair_id", String(160), primary_key=True),
    Column("seq", BigInteger, nullable=False, index=True),
    Column("request_id", String(256), nullable=False),
    Column("origin", String(16), nullable=False),
    Column("prompt_kind", String(16), nullable=False),
    Column("prompt", Text, nullable=False),
    Column("chosen", Text, nullable=False),
    Column("rejected", Text, nullable=False),
    Column("model_name", String(256), nullable=False),
    Column("model_version", String(128), nullable=False),
    Column("user_id", String(256), nullable=True),
)

proj_demonstrations = Table(
    "proj_demonstrations",
    metadata,
    Column("demo_id", String(300), primary_key=True),
    Column("feedback_event_id", String(128), nullable=False),
    Column("seq", BigInteger, nullable=False, index=True),
    Column("request_id", String(256), nullable=False),
    Column("origin", String(16), nullable=False),
    Column("prompt_kind", String(16), nullable=False),
    Column("prompt", Text, nullable=False),
    Column("response", Text, nullable=False),
    Column("model_name", String(256), nullable=False),
    Column("model_version", String(128), nullable=False),
    Column("user_id", String(256), nullable=True),
)

# Users and events left out of training sets, folded from enforcement.requested (quarantine_user,
# quarantine_events). Trainers read pairs and demonstrations through events.projections.quarantine.
proj_quarantine = Table(
    "proj_quarantine",
    metadata,
    Column("subject_kind", String(8), primary_key=True),  # "user" or "event"
    Column("subject_id", String(256), primary_key=True),
    Column("seq", BigInteger, nullable=False),
    Column("request_event_id", String(128), nullable=False),
    Column("reason", Text, nullable=False),
)

proj_feedback_stats = Table(
    "proj_feedback_stats",
    metadata,
    Column("model_name", String(256), primary_key=True),
    Column("model_version", String(128), primary_key=True),
    Column("interactions", Integer, nullable=False),
    Column("feedback", Integer, nullable=False),
    Column("thumbs_up", Integer, nullable=False),
    Column("thumbs_down", Integer, nullable=False),
    Column("rating_count", Integer, nullable=False),
    Column("rating_sum", Integer, nullable=False),
    Column("flag_toxic", Integer, nullable=False),
    Column("flag_jailbreak", Integer, nullable=False),
    Column("flag_hallucination", Integer, nullable=False),
    Column("flag_pii", Integer, nullable=False),
    Column("flag_other", Integer, nullable=False),
    Column("corrections", Integer, nullable=False),
    Column("preferences", Integer, nullable=False),
    Column("signals", Integer, nullable=False),
    Column("last_seq", BigInteger, nullable=False),
)

# --- audit trail (events/audit.py) ---
# Not a projection: `alignd replay` never rebuilds it, because a rebuild would paper over tampering. Records
# are appended in chain order, each hashing its predecessor's hash and its own fields (position included, so
# a reordering breaks the chain). No wall-clock column: every field comes from the event it records.
audit_records = Table(
    "audit_records",
    metadata,
    # Assigned by the writer (1, 2, 3...), never drawn from a sequence: a gap means a record was deleted.
    Column("position", BigInteger, primary_key=True, autoincrement=False),
    Column("event_seq", BigInteger, nullable=False, unique=True),
    Column("event_id", String(128), nullable=False),
    Column("occurred_at", String(40), nullable=False),
    Column("actor", String(256), nullable=False, index=True),
    Column("action", String(64), nullable=False, index=True),
    Column("subject", String(512), nullable=False),
    Column("model", String(300), nullable=True, index=True),
    Column("reason", Text, nullable=False),
    # The event's payload as canonical JSON, exactly as hashed.
    Column("evidence", Text, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
)

# --- leader lease (daemon/leader.py) ---
# One row per lease name: the replica that may schedule training. Taken over only once expired (database
# time on PostgreSQL); fencing_token grows by one at every change of holder, so work can be tagged with the
# term it was started in.
leader_leases = Table(
    "leader_leases",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("holder", String(256), nullable=False),
    Column("expires_at", Timestamp, nullable=False),
    Column("acquired_at", Timestamp, nullable=False),
    Column("fencing_token", BigInteger, nullable=False),
)
