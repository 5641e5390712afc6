"""outbox/errors.py: one exception tree, drawn in its docstring; library
errors carry the offending field and the CLI says it as a flag."""

from __future__ import annotations

import pytest

from outbox import errors
from outbox.errors import CaptureError, ConfigError, OutboxError


def _classes() -> list[type[BaseException]]:
    from outbox.api.errors import ApiError, BodyTooLarge, ValidationFailed
    from outbox.cli.embedded import EmbeddedError
    from outbox.relay.delivery.ssrf import UnsafeURL
    from outbox.relay.sinks.base import BrokerError, BrokerRefused, BrokerUnavailable
    from outbox.relay.sinks.spec import SpecError

    own = [
        v
        for v in vars(errors).values()
        if isinstance(v, type) and issubclass(v, BaseException) and v.__module__ == errors.__name__
    ]
    return [
        *own,
        ApiError,
        ValidationFailed,
        BodyTooLarge,
        EmbeddedError,
        BrokerError,
        BrokerRefused,
        BrokerUnavailable,
        SpecError,
        UnsafeURL,
    ]


@pytest.mark.parametrize("cls", _classes(), ids=lambda c: c.__name__)
def test_every_error_is_in_the_tree_and_drawn(cls: type[BaseException]) -> None:
    assert issubclass(cls, OutboxError)
    assert cls.__name__ in (errors.__doc__ or ""), f"{cls.__name__} is not drawn"


def test_the_relay_errors_are_the_same_classes() -> None:
    from outbox.relay import leader

    assert leader.LostLeadership is errors.LostLeadership


def test_a_library_error_names_its_field_and_the_cli_its_flag() -> None:
    from outbox.cli.main import flag_of

    exc = CaptureError("applies to {update} rules only", field="of", related=("update",))
    assert str(exc) == "of: applies to update rules only"
    assert exc.describe(flag_of) == "--of: applies to --update rules only"
    # A message that names nothing is not a template: braces stay as they are.
    assert str(OutboxError("subject {type} is fine", field="subject")) == (
        "subject: subject {type} is fine"
    )


def test_config_error_names_the_variable_or_the_flag_and_the_value() -> None:
    exc = ConfigError(
        "must exceed {webhook_timeout} (15s)",
        field="lease",
        value="1ms",
        related=("webhook_timeout",),
    )
    assert str(exc) == "OUTBOX_LEASE=1ms: must exceed OUTBOX_WEBHOOK_TIMEOUT (15s)"
    flags = {"lease": "--lease"}
    assert exc.describe(flags.get) == (
        "--lease 1ms (OUTBOX_LEASE): must exceed OUTBOX_WEBHOOK_TIMEOUT (15s)"
    )


def test_api_errors_are_http_exceptions_too() -> None:
    from starlette.exceptions import HTTPException

    from outbox.api.errors import ValidationFailed

    exc = ValidationFailed.one("url", "must be http or https")
    assert isinstance(exc, HTTPException) and isinstance(exc, OutboxError)
    assert (exc.status_code, exc.detail, exc.field) == (422, "url: must be http or https", "url")
