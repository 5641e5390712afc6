"""outbox-relay: a transactional-outbox change feed for PostgreSQL.

What an application imports: schema migrations, capture rules and publish.
"""

from outbox.capture import Rule, track, tracked, untrack
from outbox.migrate import migrate
from outbox.publish import apublish, publish, publish_session

__all__ = [
    "Rule",
    "apublish",
    "migrate",
    "publish",
    "publish_session",
    "track",
    "tracked",
    "untrack",
]
__version__ = "0.1.0"
