"""The store's roles written once for both engines (see :mod:`bridge.store.queries`):
each module holds a role's operations and a mixin with its methods, which the engines
inherit; what an engine does its own way stays in the engine."""

from bridge.store.roles.console import ConsoleMethods
from bridge.store.roles.coordination import CoordinationMethods
from bridge.store.roles.forward_queue import ForwardQueueMethods
from bridge.store.roles.inbound_log import InboundLogMethods
from bridge.store.roles.mail_queue import MailQueueMethods
from bridge.store.roles.outbox import OutboxMethods
from bridge.store.roles.reports import DeliveryReportMethods
from bridge.store.roles.scripts import ScriptRegistryMethods


class RoleMethods(OutboxMethods, MailQueueMethods, InboundLogMethods, ForwardQueueMethods,
                  DeliveryReportMethods, ScriptRegistryMethods, CoordinationMethods,
                  ConsoleMethods):
    """The methods written once, for an engine to inherit (it supplies where operations
    run: see :class:`bridge.store.queries.SqlRoles`)."""


__all__ = ["RoleMethods"]
