"""The exception tree of bridge/errors.py: every error the bridge raises on purpose is in it,
drawn in its docstring, and a forward's failure is classed by it alone."""

from __future__ import annotations

import inspect
import re

import aiosmtplib
import pytest

from bridge import errors
from bridge.relays.forward import is_permanent_forward_error


def test_the_docstring_draws_every_class_of_the_tree_under_its_parent() -> None:
    doc = errors.__doc__ or ""
    drawn = re.findall(r"^\s*[│ ]*(?:[├└]── )?(\w+(?:Error|Fault|Unavailable|Refused|Failed|"
                       r"Large|Gone|Disabled|Configured))\b", doc, re.M)
    classes = {name for name, value in vars(errors).items()
               if inspect.isclass(value) and issubclass(value, BaseException)
               and value.__module__ == errors.__name__}
    assert set(drawn) == classes
    # Each class sits one level under its parent in the drawing.
    depth = {}
    for line in doc.splitlines():
        match = re.match(r"^(\s*[│ ]*)(?:[├└]── )?(\w+)\b", line)
        if match and match.group(2) in classes:
            depth[match.group(2)] = len(match.group(1)) + (4 if "──" in line else 0)
    for name in classes - {"BridgeError"}:
        parent = getattr(errors, name).__mro__[1].__name__
        assert depth[name] == depth[parent] + 4, name


@pytest.mark.parametrize("exc", [
    LookupError("no such thing"), KeyError("job"), IndexError("row"),
    errors.ResolutionFailed("crm.example does not resolve"),
    errors.WebhookFailed(500), aiosmtplib.SMTPResponseException(451, "try later"),
    errors.StoreUnavailable("locked"),
], ids=repr)
def test_a_forward_failing_outside_the_permanent_classes_is_retried(exc: Exception) -> None:
    assert not is_permanent_forward_error(exc)


@pytest.mark.parametrize("exc", [
    errors.TargetGone("410"), errors.TargetDisabled("off"), errors.TargetNotConfigured("gone"),
    errors.EgressRefused("loopback"), aiosmtplib.SMTPResponseException(550, "no such user"),
], ids=repr)
def test_a_forward_failing_for_good_is_dead_lettered(exc: Exception) -> None:
    assert is_permanent_forward_error(exc)


def test_the_classes_stay_importable_where_callers_found_them() -> None:
    from bridge.bounded_http import AnswerRefused
    from bridge.listen import ListenError
    from bridge.relays.egress import EgressRefused, ResolutionFailed

    assert (AnswerRefused, ListenError, EgressRefused, ResolutionFailed) == (
        errors.AnswerRefused, errors.ListenError, errors.EgressRefused,
        errors.ResolutionFailed)
